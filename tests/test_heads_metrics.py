"""Head sets, head-scaling hooks and task metrics, against hand-made hooks and hand computations."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import pyarrow as pa
import pytest
import torch

from probes.base import Probe
from tests.conftest import DATA
from workbench.errors import InputError
from workbench.forward import last_logits
from workbench.heads import check_heads, parse_head, parse_heads, scale_heads_hooks
from workbench.metrics import (accuracy, answer_token_ids, kl_divergence, logit_diff,
                               normalised_recovery)
from workbench.prompts import load_prompt_set
from workbench.records import records
from workbench.run import RunOptions, execute_run
from workbench.tokens import make_batches, tokenize_prompt_set
from workbench.heads import format_head


def test_parse_heads():
    assert parse_head("9.6") == (9, 6) == parse_head("L9H6") == parse_head(" 9:6 ")
    assert parse_heads("3.1, 0.2,3.1") == [(0, 2), (3, 1)]
    assert parse_heads([(1, 1), "0.0"]) == [(0, 0), (1, 1)]
    assert format_head((9, 6)) == "L9H6" and parse_head(format_head((18, 6))) == (18, 6)
    assert parse_head("l18h6") == parse_head(" L18 H6 ") == (18, 6)
    with pytest.raises(InputError, match="not of the form L9H6"):
        parse_head("nine")
    with pytest.raises(InputError, match=f"spec.json: head {format_head((4, 0))} is out of "
                                         "range: the model has 4"):
        check_heads([(4, 0)], 4, 4, where="spec.json")


def ioi_batch(model, n=4):
    prompts = load_prompt_set(DATA / "ioi.jsonl")
    tokenized = tokenize_prompt_set(prompts, model.tokenizer, prepend_bos=False)[:n]
    return make_batches(tokenized, n, pad_id=0)[0], tokenized


def hf_o_proj_hook(hf_model, layer, head, d_head, alpha):
    """Hand-made: scale one head's slice of the o_proj input (= hook_z) in plain Hugging Face."""
    o_proj = hf_model.model.layers[layer].self_attn.o_proj

    def pre(module, args):
        (x,) = args
        x = x.clone()
        x[..., head * d_head:(head + 1) * d_head] *= alpha
        return (x,)
    return o_proj.register_forward_pre_hook(pre)


@pytest.mark.parametrize("alpha", [0.0, 2.0])
def test_scale_head_matches_hand_made_hf_hook(tiny_llama, alpha):
    from transformers import AutoTokenizer

    from workbench.tiny import TinyConfig, build_tiny_hf_model, tiny_tokenizer_dir

    hf = build_tiny_hf_model(TinyConfig("llama"),
                             len(AutoTokenizer.from_pretrained(tiny_tokenizer_dir())))
    batch, _ = ioi_batch(tiny_llama)
    got = last_logits(tiny_llama, batch, scale_heads_hooks([(2, 1)], alpha))
    handle = hf_o_proj_hook(hf, 2, 1, tiny_llama.info.d_head, alpha)
    try:
        with torch.inference_mode():
            out = hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    finally:
        handle.remove()
    want = out[torch.arange(batch.size), batch.last_pos()]
    assert torch.allclose(got, want, atol=1e-5)
    plain = last_logits(tiny_llama, batch)
    assert not torch.allclose(got, plain, atol=1e-3)  # the edit did something


def test_alpha_one_is_an_exact_no_op(tiny_llama):
    batch, _ = ioi_batch(tiny_llama)
    plain = last_logits(tiny_llama, batch)
    same = last_logits(tiny_llama, batch, scale_heads_hooks([(0, 0), (3, 2)], 1.0))
    assert torch.equal(plain, same)


def test_logit_diff_and_friends_hand_cases():
    last = torch.tensor([[1.0, 3.0, 0.5], [2.0, -1.0, 0.0]])
    ld = logit_diff(last, torch.tensor([1, 0]), torch.tensor([0, 1]))
    assert ld.tolist() == [2.0, 3.0]
    assert accuracy(torch.tensor([1.0, -0.5, 2.0, 0.0])) == 0.5
    assert normalised_recovery(2.0, 4.0, 0.0) == 0.5
    p = torch.tensor([[0.0, math.log(3.0)]])  # softmax -> [1/4, 3/4]
    q = torch.tensor([[0.0, 0.0]])  # [1/2, 1/2]
    want = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert kl_divergence(p, q).item() == pytest.approx(want, abs=1e-6)
    assert kl_divergence(p, p).item() == pytest.approx(0.0, abs=1e-7)


def test_answer_token_ids(tiny_llama):
    _, tokenized = ioi_batch(tiny_llama, 3)
    ids = answer_token_ids(tiny_llama.tokenizer, tokenized)
    for tok, i in zip(tokenized, ids.tolist()):
        assert i == tiny_llama.tokenizer(tok.prompt.answer, add_special_tokens=False).input_ids[0]
    with pytest.raises(InputError, match="has no 'answer'"):
        answer_token_ids(tiny_llama.tokenizer, load_prompt_set(DATA / "natural.jsonl").prompts)


@dataclass(frozen=True)
class _OwnForward(Probe):
    """A probe with its own forward pass: records each prompt's LD under a zero-ablated head."""

    name: ClassVar[str] = "own_forward_test"
    hook_points: ClassVar[tuple[str, ...]] = ()
    units: ClassVar[dict[str, str]] = {"ld": "logits"}
    owns_forward: ClassVar[bool] = True
    head: str = "1.1"
    prepared: bool = False

    def prepare(self, model, tokenized):
        return _OwnForward(self.head, prepared=True)

    def run_batch(self, model, batch) -> pa.Table:
        assert self.prepared
        ans = answer_token_ids(model.tokenizer, batch.prompts)
        dis = answer_token_ids(model.tokenizer, batch.prompts, "distractor")
        ld = logit_diff(last_logits(model, batch, scale_heads_hooks(parse_heads(self.head), 0)),
                        ans, dis)
        return records("ld", ld.numpy(), prompt_id=pa.array(batch.prompt_ids),
                       condition=f"ablate {self.head}")


def test_owns_forward_probe_goes_through_the_run_loop(tiny_llama, tmp_path):
    prompts = load_prompt_set(DATA / "ioi.jsonl")
    run = execute_run(tiny_llama, prompts, [_OwnForward()],
                      RunOptions(runs_dir=tmp_path, batch_size=32, progress=False))
    table = run.read_table("own_forward_test").to_pandas()
    assert len(table) == 100 and (table.condition == "ablate 1.1").all()
    assert run.read_manifest()["probes"][0]["params"] == {"head": "1.1", "prepared": True}
    batch, tokenized = ioi_batch(tiny_llama, 4)
    ld = logit_diff(last_logits(tiny_llama, batch, scale_heads_hooks([(1, 1)], 0)),
                    answer_token_ids(tiny_llama.tokenizer, batch.prompts),
                    answer_token_ids(tiny_llama.tokenizer, batch.prompts, "distractor"))
    got = table.set_index("prompt_id").value
    for tok, v in zip(batch.prompts, ld.tolist()):
        assert got[tok.id] == pytest.approx(v, abs=1e-5)
