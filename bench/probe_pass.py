"""Benchmark: the probe pass against a plain Hugging Face forward on the same batches.

    python -m bench.probe_pass [--probes attention_entropy] [--repeats 7] [--json out.json]
    python -m bench.probe_pass --probes attention_sink,massive_activations,head_types

Times, in one process and interleaved (each repeat runs every variant once, medians reported):

* ``hf_eager``: plain Hugging Face forward, eager attention (what a pattern probe needs), logits;
* ``hf_sdpa``: the same with the fused attention kernel (reported beside it);
* ``probe_pass``: the workbench's pass (bridge, hooks on the probes' points, per-batch reduction to
  records; it stops before the unembedding when no probe needs logits);
* ``run_with_cache``: the bridge caching every activation (the usual TransformerLens workflow).

Peak memory is measured per variant in a fresh subprocess: after one warm-up forward, resident memory
is sampled every millisecond during a second forward; "peak" is the maximum (model included) and
"extra" the maximum minus the resident memory right before that forward.
Shapes: batch 8 x 32 tokens and batch 1 x 512 tokens of natural text. Probes run with their
default parameters; ``prepare()`` runs once on the 8 x 32 batch before timing (``attention_sink``
discovers its sink dimensions there, so its VAR statistics are timed too).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

SHAPES = [(8, 32), (1, 512)]
VARIANTS = ["hf_eager", "hf_sdpa", "probe_pass", "run_with_cache"]
ROOT = Path(__file__).resolve().parent.parent


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Samples resident memory in a thread; ``peak`` is the maximum seen while active."""

    def __init__(self, interval: float = 0.001):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def __enter__(self):
        self.peak = rss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def text_batch(tokenizer, batch: int, seq: int):
    """``[batch, seq]`` token ids cut from the shipped natural-text prompts (real prose)."""
    import torch

    text = " ".join(json.loads(line)["text"] for line in open(ROOT / "data" / "natural.jsonl"))
    ids = tokenizer(text, add_special_tokens=False).input_ids
    need = batch * seq
    ids = (ids * (need // len(ids) + 1))[:need]
    return torch.tensor(ids).view(batch, seq)


def build(variant: str, probe_names: list[str]):
    """Return a zero-argument callable that runs ``variant`` once on a given batch."""
    import torch
    from transformers import AutoModelForCausalLM

    from workbench.models import load_model, smollm2_cache
    from workbench.settings import resolve_device, resolve_dtype

    device = resolve_device(None)  # the workbench's defaults: CUDA and bf16 when there is a GPU
    if variant.startswith("hf_"):
        folder, _ = smollm2_cache()
        impl = variant.removeprefix("hf_")
        hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation=impl,
                                                  dtype=resolve_dtype(None, device))
        hf = hf.to(device).eval()

        def runner(ids):
            ids = ids.to(device)
            with torch.inference_mode():
                hf(input_ids=ids, attention_mask=torch.ones_like(ids))
        return runner
    model = load_model("smollm2-135m")
    if variant == "run_with_cache":
        def runner(ids):
            with torch.inference_mode():
                model.bridge.run_with_cache(ids.to(device))
        return runner

    import numpy as np

    from probes import make_probes
    from workbench.prompts import Prompt
    from workbench.run import BatchHooks
    from workbench.tokens import Batch, TokenizedPrompt

    def prompts(ids):
        return [TokenizedPrompt(Prompt(f"p{i}", "x"), ids[i].numpy(),
                                np.zeros((ids.shape[1], 2)), {}) for i in range(ids.shape[0])]

    # prepare() outside the timed call (attention_sink discovers its sink dimensions there)
    sample = prompts(text_batch(model.tokenizer, 8, 32))
    hooks = BatchHooks(model, [p.prepare(model, sample) for p in make_probes(probe_names)])

    def runner(ids):
        b, s = ids.shape
        hooks.run_batch(Batch(0, prompts(ids), ids, torch.ones_like(ids), torch.full((b,), s)))
    return runner


def time_all(probe_names: list[str], repeats: int, shapes=tuple(SHAPES),
             variants=tuple(VARIANTS), stat=statistics.median) -> dict:
    """Seconds per forward of each variant and shape: ``stat`` (median; ``min`` for the least
    disturbed run on a shared machine) of ``repeats`` interleaved repeats after a warm-up."""
    from transformers import AutoTokenizer

    from workbench.models import smollm2_cache

    tokenizer = AutoTokenizer.from_pretrained(smollm2_cache()[0])
    runners = {v: build(v, probe_names) for v in variants}
    results = {}
    for batch, seq in shapes:
        ids = text_batch(tokenizer, batch, seq)
        for fn in runners.values():  # warm-up
            fn(ids)
        samples = {v: [] for v in variants}
        for _ in range(repeats):
            for v, fn in runners.items():
                t = time.perf_counter()
                fn(ids)
                samples[v].append(time.perf_counter() - t)
        results[f"{batch}x{seq}"] = {v: stat(s) for v, s in samples.items()}
    return results


def memory_one(variant: str, batch: int, seq: int, probe_names: list[str]) -> dict:
    """Run in a subprocess: peak resident memory of one forward of ``variant``."""
    from transformers import AutoTokenizer

    from workbench.models import smollm2_cache

    tokenizer = AutoTokenizer.from_pretrained(smollm2_cache()[0])
    runner = build(variant, probe_names)
    ids = text_batch(tokenizer, batch, seq)
    import gc

    runner(ids)  # warm-up: pages in lazily loaded weights, sizes allocator pools
    gc.collect()
    before = rss_bytes()
    with PeakRSS() as peak:
        runner(ids)
    return {"before": before, "peak": peak.peak, "extra": peak.peak - before}


def memory_all(probe_names: list[str], shapes=tuple(SHAPES), variants=tuple(VARIANTS)) -> dict:
    out = {}
    for batch, seq in shapes:
        for v in variants:
            cmd = [sys.executable, "-m", "bench.probe_pass", "--memory-child", v, str(batch),
                   str(seq), "--probes", ",".join(probe_names)]
            res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
            out.setdefault(f"{batch}x{seq}", {})[v] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def report(times: dict, memory: dict) -> str:
    lines = [f"{'shape':>8} {'variant':>15} {'time s':>8} {'tok/s':>7} {'x hf_eager':>10} "
             f"{'peak MB':>8} {'peak x hf':>9} {'extra MB':>9} {'extra x hf':>10}"]
    for shape, row in times.items():
        n_tok = math.prod(int(x) for x in shape.split("x"))  # "8x32" -> 256
        base_t = row["hf_eager"]
        base = memory[shape]["hf_eager"]
        for v in VARIANTS:
            m = memory[shape][v]
            lines.append(f"{shape:>8} {v:>15} {row[v]:8.3f} {n_tok / row[v]:7.0f} "
                         f"{row[v] / base_t:10.3f} "
                         f"{m['peak'] / 2**20:8.0f} {m['peak'] / base['peak']:9.2f} "
                         f"{m['extra'] / 2**20:9.0f} {m['extra'] / max(base['extra'], 1):10.2f}")
    return "\n".join(lines)


def suite(quick: bool = False) -> tuple[list[dict], dict]:
    """Rows for ``python -m bench``: probe pass / plain HF forward time ratio per shape (memory
    is :mod:`bench.memory`'s). ``quick``: one repeat of batch 2 x 32."""
    names = ["attention_entropy"]
    times = time_all(names, 1 if quick else 7, [(2, 32)] if quick else SHAPES)
    rows = []
    for shape, row in times.items():
        n_tok = math.prod(int(x) for x in shape.split("x"))
        rows.append({"benchmark": "probe_pass", "measure": f"plain HF forward (eager) {shape}",
                     "value": row["hf_eager"], "unit": "s",
                     "note": f"{n_tok / row['hf_eager']:.0f} tok/s"})
        rows.append({"benchmark": "probe_pass",
                     "measure": f"probe pass (attention_entropy) {shape}",
                     "value": row["probe_pass"], "unit": "s",
                     "note": f"{row['probe_pass'] / row['hf_eager']:.3f}x the plain forward; "
                             f"{n_tok / row['probe_pass']:.0f} tok/s"})
    return rows, {"probes": names, "times_s": times}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--probes", default="attention_entropy")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--memory-child", nargs=3, metavar=("VARIANT", "BATCH", "SEQ"))
    args = parser.parse_args(argv)
    names = [n for n in args.probes.split(",") if n]
    if args.memory_child:
        v, b, s = args.memory_child
        print(json.dumps(memory_one(v, int(b), int(s), names)))
        return 0
    import torch

    times = time_all(names, args.repeats)
    memory = memory_all(names)
    print(f"probes: {','.join(names)}; torch threads: {torch.get_num_threads()}; "
          f"median of {args.repeats} interleaved repeats")
    print(report(times, memory))
    if args.json:
        args.json.write_text(json.dumps({"probes": names, "times_s": times, "memory": memory},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
