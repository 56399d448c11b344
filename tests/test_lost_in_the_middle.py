"""The lost-in-the-middle report: behaviour by answer depth against an independent HF forward, and
its attention tables against the probe's records."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from experiments.lost_in_the_middle import main
from tests.conftest import DATA
from tests.test_position_bias import tiny_hf


@pytest.mark.parametrize("mask", [None, "window:8"])
def test_report_on_tiny_llama(mask, tiny_llama, tmp_path, capsys):
    from workbench.masks import AttentionMask

    lines = (DATA / "retrieval.jsonl").read_text().splitlines()
    prompts = tmp_path / "r.jsonl"
    prompts.write_text("\n".join(lines[:12]) + "\n")  # two prompts per needle depth
    args = ["--model", "tiny-llama", "--prompts", str(prompts), "--runs-dir", str(tmp_path),
            "--batch-size", "5", "--layers", "1,-1", "--json", str(tmp_path / "out.json")]
    result = main(args + (["--attention-mask", mask] if mask else []))
    assert "by answer depth" in capsys.readouterr().out
    assert json.loads((tmp_path / "out.json").read_text())["depth"] == json.loads(
        json.dumps(result["depth"], default=str))

    # independent: HF tiny Llama, one unpadded prompt at a time, the mask as a 4D additive mask
    hf, tok = tiny_hf("llama"), tiny_llama.tokenizer
    diffs = {}
    for line in lines[:12]:
        p = json.loads(line)
        ids = torch.tensor([tok(p["text"], add_special_tokens=False).input_ids])
        n = ids.shape[1]
        allowed = (AttentionMask.parse(mask) if mask else AttentionMask("causal")).allowed(n)
        additive = torch.zeros(n, n).masked_fill(~allowed, torch.finfo(torch.float32).min)
        with torch.inference_mode():
            last = hf(input_ids=ids, attention_mask=additive[None, None]).logits[0, -1]
        a, d = (tok(p[k], add_special_tokens=False).input_ids[0] for k in ("answer",
                                                                           "distractor"))
        diffs.setdefault(p["meta"]["depth"], []).append(float(last[a] - last[d]))
    by_depth = {r["answer_depth"]: r for r in result["depth"] if r["grouped_by"] == "depth"}
    for depth, values in diffs.items():
        assert by_depth[depth]["n"] == len(values) == 4
        assert by_depth[depth]["logit_diff"] == pytest.approx(np.mean(values), abs=1e-4)
        assert by_depth[depth]["accuracy"] == pytest.approx(np.mean(np.array(values) > 0))
    assert [r["layer"] for r in result["layers"]] == [0, 1, 2, 3]
    assert {r["condition"] for r in result["deciles"]} == {"product", "rollout"}
    assert set(result["depth"][0]) >= {"needle_rollout_L1", "needle_rollout_L3"}
