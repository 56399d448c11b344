"""The quickstart task with TransformerLens 4 directly (no workbench), for comparison with the
8-line API snippet (examples/quickstart.ipynb): load SmolLM2-135M, on three prompts compute per
(layer, head) the attention-sink share of the first token, the induction score and the normalised
attention entropy, as (layer x head) tables, and the top 5 heads of each.

Usage: python bench/tl_direct.py FOLDER (a SmolLM2 checkpoint folder; the workbench's converted
GGUF cache is one: python -c "from workbench.models import smollm2_cache; print(smollm2_cache()[0])").
The lines between the "task" markers are what a researcher writes; the script prints their count,
the seconds it took, and the largest difference from the workbench's records.
"""

import sys
import time

t0 = time.perf_counter()
# --- task start
import math
import pandas as pd
import torch
from transformer_lens.model_bridge import TransformerBridge

bridge = TransformerBridge.boot_transformers(sys.argv[1], device="cpu", dtype=torch.float32)
texts = ["The cat sat on the mat. The cat sat on the mat.",
         "Alice met Bob at the park, and then Alice met Bob at the cafe.",
         "red green blue yellow purple red green blue yellow purple"]
L, H = bridge.cfg.n_layers, bridge.cfg.n_heads
sums = {m: torch.zeros(L, H) for m in ("sink", "induction", "entropy")}
for text in texts:
    ids = bridge.tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    _, cache = bridge.run_with_cache(ids, names_filter=lambda n: n.endswith("hook_pattern"))
    n = ids.shape[1]
    toks = ids[0].tolist()
    # induction target: query i attends to j+1 where toks[j] == toks[i], j < i (previous occurrence)
    target = torch.zeros(n, n)
    for i in range(n):
        for j in range(i):
            if toks[j] == toks[i] and j + 1 < i:
                target[i, j + 1] = 1
    rows = target.sum(-1) > 0
    logk = torch.log(torch.arange(1, n + 1, dtype=torch.float32))
    for layer in range(L):
        p = cache[f"blocks.{layer}.attn.hook_pattern"][0].float()  # [head, q, k]
        sums["sink"][layer] += p[:, 1:, 0].mean(-1)
        sums["induction"][layer] += (p * target).sum(-1)[:, rows].mean(-1) if rows.any() else 0
        ent = -(p * torch.log(p.clamp_min(1e-30))).sum(-1)
        sums["entropy"][layer] += (ent[:, 1:] / logk[1:]).mean(-1)
tables = {m: pd.DataFrame((s / len(texts)).numpy()).rename_axis("layer") for m, s in sums.items()}
top5 = {m: t.stack().sort_values(ascending=False).head(5) for m, t in tables.items()}
# --- task end
seconds = time.perf_counter() - t0
src = open(__file__).read().split("# --- task start\n")[1].split("# --- task end")[0]
lines = [ln for ln in src.splitlines() if ln.strip() and not ln.strip().startswith("#")]
print(f"TransformerLens direct: {len(lines)} lines, {seconds:.1f} s (imports, load and run)")
for m, t in top5.items():
    print(m, [(int(a), int(b), round(float(v), 3)) for (a, b), v in t.items()])
