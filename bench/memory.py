"""Benchmark: peak memory of one forward at long contexts, probe pass against a plain forward and
against ``run_with_cache``.

    python -m bench.memory [--seqs 512,2048,8192] [--quick] [--json out.json]

Every measurement runs in a fresh subprocess (``python -m bench.memory --child VARIANT SEQ``) that
loads SmolLM2-135M (the workbench's defaults: CUDA and bf16 when there is a GPU), runs a 64-token
warm-up forward, then one forward of batch 1 x SEQ tokens of natural text:

* on the CPU, resident memory is sampled every millisecond during that forward
  (:class:`bench.probe_pass.PeakRSS`): ``peak`` (model included) and ``extra`` = peak minus the
  resident memory right before the forward; ``ru_maxrss`` (the process's lifetime maximum,
  loading included) is reported beside them;
* on CUDA, ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``.

Variants (:func:`bench.probe_pass.build`): ``hf_eager`` (the plain forward a pattern probe is
compared with), ``hf_sdpa``, ``probe_pass`` (``attention_entropy``: eager attention, every layer's
pattern reduced in its hook) and ``run_with_cache`` (TransformerLens caching every activation).
``run_with_cache`` is skipped, with its estimated size, when that estimate exceeds 80% of the free
memory (:data:`CACHE_FRACTION`; each measurement has its own subprocess, so a miss costs nothing):
its cache alone holds ``n_layers * (2 * n_heads * seq^2 + ~24 * seq * d_model) * 4``
bytes (scores and pattern of every layer plus the residual-size activations).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

from bench.probe_pass import ROOT, PeakRSS, build, rss_bytes, text_batch

SEQS = (512, 2048, 8192)
QUICK_SEQS = (128,)
VARIANTS = ("hf_eager", "hf_sdpa", "probe_pass", "run_with_cache")
SMOLLM2 = {"n_layers": 30, "n_heads": 9, "d_model": 576}
MIB = 2 ** 20


def cache_estimate(seq: int, n_layers: int, n_heads: int, d_model: int) -> int:
    """Estimated bytes of ``run_with_cache``'s activations, one prompt of ``seq`` tokens, fp32."""
    return n_layers * (2 * n_heads * seq * seq + 24 * seq * d_model) * 4


def child(variant: str, seq: int) -> dict:
    """In the subprocess: the peak memory of one forward of ``variant`` at ``seq`` tokens."""
    import gc

    import torch
    from transformers import AutoTokenizer

    from workbench.models import smollm2_cache

    tokenizer = AutoTokenizer.from_pretrained(smollm2_cache()[0])
    runner = build(variant, ["attention_entropy"])
    runner(text_batch(tokenizer, 1, 64))  # warm-up: pages in the weights, sizes the allocator
    gc.collect()
    ids = text_batch(tokenizer, 1, seq)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        runner(ids)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        return {"device": "cuda", "before": before, "peak": peak, "extra": peak - before}
    before = rss_bytes()
    with PeakRSS() as sampler:
        runner(ids)
    return {"device": "cpu", "before": before, "peak": sampler.peak,
            "extra": sampler.peak - before,
            "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


CACHE_FRACTION = 0.8  # of the free memory, the largest estimated cache that is measured


def free_bytes() -> int:
    from workbench.memory import free_memory
    from workbench.settings import resolve_device

    return free_memory(resolve_device(None)) or 0


def measure(seqs=SEQS) -> dict:
    """``{seq: {variant: result or {"skipped": reason, "estimated_cache": bytes}}}``."""
    out: dict[str, dict] = {}
    for seq in seqs:
        for variant in VARIANTS:
            estimate = cache_estimate(seq, **SMOLLM2)
            if variant == "run_with_cache" and estimate > free_bytes() * CACHE_FRACTION:
                out.setdefault(str(seq), {})[variant] = {
                    "skipped": f"the cache alone needs ~{estimate / 2**30:.1f} GiB (estimated), "
                               f"more than {CACHE_FRACTION:.0%} of the free "
                               f"{free_bytes() / 2**30:.1f} GiB",
                    "estimated_cache": estimate}
                continue
            cmd = [sys.executable, "-m", "bench.memory", "--child", variant, str(seq)]
            res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            if res.returncode != 0:
                tail = (res.stderr.strip().splitlines() or ["(no output)"])[-1]
                out.setdefault(str(seq), {})[variant] = {"skipped": f"failed: {tail}"}
                continue
            out.setdefault(str(seq), {})[variant] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def suite(quick: bool = False) -> tuple[list[dict], dict]:
    """Rows for ``python -m bench``: peak and extra memory of each variant, and the ratios of
    the probe pass and ``run_with_cache`` to the plain forward."""
    result = measure(QUICK_SEQS if quick else SEQS)
    rows = []
    for seq, by_variant in result.items():
        base = by_variant.get("hf_eager", {})
        for variant, m in by_variant.items():
            row = {"benchmark": "memory", "measure": f"{variant} at {seq} tokens", "unit": "MiB"}
            if "skipped" in m:
                est = m.get("estimated_cache")
                rows.append({**row, "value": None if est is None else est / MIB,
                             "note": "skipped: " + m["skipped"]})
                continue
            note = f"extra {m['extra'] / MIB:.0f} MiB"
            if "peak" in base and variant != "hf_eager":
                note += f"; peak {m['peak'] / base['peak']:.2f}x hf_eager"
            rows.append({**row, "value": m["peak"] / MIB, "note": note})
    return rows, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seqs", default=",".join(map(str, SEQS)))
    parser.add_argument("--quick", action="store_true", help=f"seqs {QUICK_SEQS} (a smoke run)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "SEQ"))
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]))))
        return 0
    seqs = QUICK_SEQS if args.quick else tuple(int(s) for s in args.seqs.split(","))
    result = measure(seqs)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
