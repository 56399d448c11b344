"""Benchmark: activation-patching grids per layer x position, packed against one forward per cell.

    python -m bench.grids [--n-prompts 16] [--every 5] [--full] [--json out.json]

On SmolLM2-135M (fp32), the first ``--n-prompts`` IOI prompts in one batch, corrupted into clean:

* ``per_cell``: :func:`circuits.grids.patching_grid` with ``packed=False, positions_per_forward=1``,
  one forward from the patched layer over the whole sequence per (layer, position) cell (the grid
  before packing);
* ``packed``: the default, every layer's cells packed in one pass, each computed from its patched
  position on (:mod:`circuits.grid_pack`).

Both run on the layers ``0, every, 2 every, ...`` of ``resid_pre`` in one process (packed, per
cell, packed again; the faster packed run counts) and must agree to 1e-5 logits. The whole
``workbench circuits --grids all --dla`` part on those prompts (three packed grids over every layer
and direct logit attribution) is estimated from packed runs of the three components on the same
layers: beyond the per-grid work (measured as the grid of the last layer alone), a grid's time
scales with the blocks its layers run, ``sum (L - l)``; ``--full`` runs the whole part instead.
Targets: packed >= 4x faster than per cell; the whole part <= 300 s.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from bench.targets import target_row

COMPONENTS = ("resid_pre", "attn_out", "mlp_out")


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def measure(n_prompts: int = 16, every: int = 5, full: bool = False) -> dict:
    import torch

    from circuits.dla import direct_logit_attribution
    from circuits.grids import patching_grid
    from circuits.tasks import load_task
    from workbench.models import load_model

    model = load_model("smollm2-135m")
    task = load_task("ioi", model, n_prompts=n_prompts)
    n_layers = model.info.n_layers
    layers = list(range(0, n_layers, every))
    args = dict(batch_size=n_prompts)
    packed, t1 = _timed(patching_grid, model, task, "resid_pre", layers=layers, **args)
    one, t_cell = _timed(patching_grid, model, task, "resid_pre", layers=layers, packed=False,
                         positions_per_forward=1, **args)
    _, t2 = _timed(patching_grid, model, task, "resid_pre", layers=layers, **args)
    diff = float(np.nanmax(np.abs(packed.effects.patched - one.effects.patched)))
    res = {"n_prompts": len(task), "layers": layers, "n_positions": len(packed.offsets),
           "per_cell_s": t_cell, "packed_s": [t1, t2], "speedup": t_cell / min(t1, t2),
           "max_diff": diff, "torch_threads": torch.get_num_threads()}
    _, t_dla = _timed(direct_logit_attribution, model, task, batch_size=n_prompts)
    res["dla_s"] = t_dla
    if full:
        grids = {c: _timed(patching_grid, model, task, c, **args)[1] for c in COMPONENTS}
        res.update(full_grids_s=grids, whole_s=sum(grids.values()) + t_dla, whole_estimated=False)
        return res
    # the other components on the same layers, and a grid of the last layer alone (the per-grid
    # work: captures, keys and values, checks); the rest scales with the blocks run, sum (L - l)
    subset = {"resid_pre": min(t1, t2)}
    for component in COMPONENTS[1:]:
        subset[component] = _timed(patching_grid, model, task, component, layers=layers,
                                   **args)[1]
    _, fixed = _timed(patching_grid, model, task, "resid_pre", layers=[n_layers - 1], **args)
    scale = sum(n_layers - layer for layer in range(n_layers)) / sum(n_layers - layer
                                                                     for layer in layers)
    estimate = {c: fixed + max(t - fixed, 0.0) * scale for c, t in subset.items()}
    res.update(subset_s=subset, per_grid_fixed_s=fixed, estimated_grids_s=estimate,
               whole_s=sum(estimate.values()) + t_dla, whole_estimated=True)
    return res


def suite(quick: bool = False) -> tuple[list[dict], dict]:
    """Rows for ``python -m bench``; ``quick``: 4 prompts, every 15th layer (smoke only)."""
    res = measure(4, 15) if quick else measure()
    what = (f"resid_pre, {len(res['layers'])} layers x {res['n_positions']} positions x "
            f"{res['n_prompts']} IOI prompts")
    rows = [{"benchmark": "grids", "measure": f"one forward per cell ({what})",
             "value": res["per_cell_s"], "unit": "s"},
            target_row("grids", "packed cells: speedup over one forward per cell",
                       res["speedup"], "x", 4.0, ">=",
                       f"packed {min(res['packed_s']):.1f} s; max |LD difference| "
                       f"{res['max_diff']:.1e} (target <= 1e-5)"),
            target_row("grids", f"--grids all --dla, {res['n_prompts']} IOI prompts"
                       + (" (estimated)" if res["whole_estimated"] else ""), res["whole_s"], "s",
                       300.0, "<=", f"DLA {res['dla_s']:.1f} s" + (
                           "; from the measured layers (python -m bench.grids --full runs it)"
                           if res["whole_estimated"] else ""))]
    return rows, res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-prompts", type=int, default=16)
    parser.add_argument("--every", type=int, default=5, help="measure layers 0, every, ...")
    parser.add_argument("--full", action="store_true", help="run the whole --grids all --dla")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    res = measure(args.n_prompts, args.every, args.full)
    print(f"resid_pre on layers {res['layers']}, {res['n_positions']} positions, "
          f"{res['n_prompts']} IOI prompts, torch threads {res['torch_threads']}")
    print(f"one forward per cell: {res['per_cell_s']:8.1f} s")
    print(f"packed:               {min(res['packed_s']):8.1f} s (runs "
          f"{', '.join(f'{t:.1f}' for t in res['packed_s'])}); speedup {res['speedup']:.2f}x; "
          f"max |LD difference| {res['max_diff']:.1e}")
    label = "estimated" if res["whole_estimated"] else "measured"
    print(f"--grids all --dla: {res['whole_s']:.1f} s ({label}; DLA {res['dla_s']:.1f} s)")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
