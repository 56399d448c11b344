"""Benchmark: the atlas's evidence parts on SmolLM2 (role ablations with 20 control draws, and
composition scores of all 270 heads) against a plain forward, measured in one process.

    python -m bench.atlas_causal [--atlas runs/atlas-smollm2] [--draws 20] [--prompts 12]

Needs a finished atlas (its role columns say which heads to ablate; ``make demo``). Prints the
seconds of each part and role, and each as a multiple of one plain Hugging Face forward of the
repeated-token prompts the induction test uses (timed just before and after, median), so a number
measured on a loaded machine can still be compared. Targets (issue 26): the role ablations of all
roles in at most 2 minutes and the composition scores in at most 30 s on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

TARGETS = {"causal_s": 120.0, "composition_s": 30.0}


def _plain_forward(model, batches) -> float:
    import torch

    start = time.perf_counter()
    with torch.inference_mode():
        for b in batches:
            model.bridge.original_model(input_ids=b.input_ids, attention_mask=b.attention_mask)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--atlas", type=Path, default=Path("runs/atlas-smollm2"))
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    from atlas import AtlasOptions, open_atlas
    from atlas.causal_part import run_causal
    from atlas.composition import compose
    from atlas.role_tests import repeated_loss
    from workbench.models import load_model

    atlas = open_atlas(args.atlas)
    model = load_model(atlas.doc["model_spec"], device="cpu")
    unit = repeated_loss(model, AtlasOptions().repeated, args.prompts, 8).batches
    before = [_plain_forward(model, unit) for _ in range(3)]
    start = time.perf_counter()
    comp = compose(model)
    composition_s = time.perf_counter() - start
    print(f"composition CPU time (all threads): {comp.cpu_seconds:.1f} s")
    with tempfile.TemporaryDirectory() as tmp:
        options = AtlasOptions(out=Path(tmp) / "atlas-bench", causal_draws=args.draws,
                               causal_prompts=args.prompts, progress=False)
        start = time.perf_counter()
        run = run_causal(model, atlas.heads, options, atlas.doc["model_spec"])
        causal_s = time.perf_counter() - start
        timings = run.read_manifest()["timings"]
    after = [_plain_forward(model, unit) for _ in range(3)]
    forward = statistics.median(before + after)
    result = {"composition_s": composition_s, "causal_s": causal_s, "causal_timings": timings,
              "plain_forward_s": forward, "forward_spread": [min(before + after),
                                                             max(before + after)],
              "draws": args.draws, "prompts": args.prompts, "n_pairs": int(sum(
                  (s == s).sum() for s in comp.scores.values()))}
    print(f"plain forward of {args.prompts} repeated-token prompts: {forward:.3f} s (min "
          f"{min(before + after):.3f}, max {max(before + after):.3f})")
    print(f"composition, {result['n_pairs']} scores: {composition_s:.1f} s = "
          f"{composition_s / forward:.1f} forwards (target <= {TARGETS['composition_s']:.0f} s)")
    print(f"causal part, {args.draws} draws: {causal_s:.1f} s = {causal_s / forward:.1f} forwards "
          f"(target <= {TARGETS['causal_s']:.0f} s)")
    for key, value in timings.items():
        print(f"  {key}: {value:.1f} s = {value / forward:.1f} forwards")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
