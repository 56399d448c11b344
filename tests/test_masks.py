"""Attention-mask variants: parsing, hand-computed patterns, the masked bridge against plain Hugging
Face given the same mask as a 4D attention mask, the take-effect check, and the run-level option."""

from __future__ import annotations

import math
import weakref

import pytest
import torch

from tests.conftest import write_jsonl
from tests.test_run import cli, run_args
from workbench import masks
from workbench.errors import InputError
from workbench.masks import AttentionMask, MaskNotApplied, apply_mask, mask_hooks, verify_mask
from workbench.store import list_runs

MIN = torch.finfo(torch.float32).min


@pytest.mark.parametrize("text, kind, arg, canonical", [
    ("causal", "causal", None, "causal"), ("window:16", "window", 16, "window:16"),
    (" Prefix:4 ", "prefix", 4, "prefix:4"), ("decay:0.9", "decay", 0.9, "decay:0.9"),
    ("decay:1", "decay", 1.0, "decay:1"),
])
def test_parse(text, kind, arg, canonical):
    mask = AttentionMask.parse(text)
    assert (mask.kind, mask.arg, str(mask)) == (kind, arg, canonical)
    assert AttentionMask.parse(str(mask)) == mask


@pytest.mark.parametrize("text, message", [
    ("sliding:4", "attention mask 'sliding' is unknown"), ("window", "needs an argument"),
    ("window:0", "needs a whole number >= 1"), ("prefix:2.5", "'2.5' is not a number"),
    ("decay:1.5", "needs 0 < gamma <= 1"), ("decay:0", "needs 0 < gamma <= 1"),
    ("causal:3", "'causal' takes no argument"),
])
def test_parse_errors(text, message):
    with pytest.raises(InputError, match=message):
        AttentionMask.parse(text)


def test_allowed_by_hand():
    t, f = True, False
    assert AttentionMask.parse("window:2").allowed(4).tolist() == [
        [t, f, f, f], [t, t, f, f], [f, t, t, f], [f, f, t, t]]
    assert AttentionMask.parse("prefix:2").allowed(4).tolist() == [
        [t, t, f, f], [t, t, f, f], [t, t, t, f], [t, t, t, t]]
    causal = AttentionMask.parse("causal").allowed(4)
    assert causal.tolist() == [[t, f, f, f], [t, t, f, f], [t, t, t, f], [t, t, t, t]]
    assert torch.equal(AttentionMask.parse("decay:0.5").allowed(4), causal)
    assert AttentionMask.parse("window:4").is_trivial_for_causal(4)
    assert not AttentionMask.parse("window:3").is_trivial_for_causal(4)
    assert AttentionMask.parse("prefix:1").is_trivial_for_causal(9)
    assert not AttentionMask.parse("decay:0.5").is_trivial_for_causal(2)


def causal_zero_scores(n: int) -> torch.Tensor:
    """Scores of 0 with the model's causal mask already applied, as hook_attn_scores hands them."""
    allowed = torch.ones(n, n, dtype=torch.bool).tril()
    return torch.zeros(1, 1, n, n).masked_fill(~allowed, MIN)


def test_masks_reproduce_hand_computed_patterns():
    scores = causal_zero_scores(4)
    window = torch.softmax(apply_mask(scores, AttentionMask.parse("window:2")), -1)[0, 0]
    assert torch.allclose(window, torch.tensor([
        [1, 0, 0, 0], [.5, .5, 0, 0], [0, .5, .5, 0], [0, 0, .5, .5]]))
    # prefix: the model's scores of future prefix keys come from q.k (here 0, 0 and 0)
    prefix = torch.softmax(apply_mask(scores, AttentionMask.parse("prefix:2"),
                                      future=torch.zeros(1, 1, 2, 2)), -1)[0, 0]
    assert torch.allclose(prefix, torch.tensor([
        [.5, .5, 0, 0], [.5, .5, 0, 0], [1 / 3, 1 / 3, 1 / 3, 0], [.25, .25, .25, .25]]))
    decay = torch.softmax(apply_mask(scores, AttentionMask.parse("decay:0.5")), -1)[0, 0]
    assert torch.allclose(decay, torch.tensor([
        [1, 0, 0, 0], [1 / 3, 2 / 3, 0, 0], [1 / 7, 2 / 7, 4 / 7, 0],
        [1 / 15, 2 / 15, 4 / 15, 8 / 15]]))
    causal = torch.softmax(apply_mask(scores, AttentionMask.parse("causal")), -1)[0, 0]
    assert torch.allclose(causal[3], torch.full((4,), .25))
    assert torch.isfinite(apply_mask(scores, AttentionMask.parse("window:1"))).all()


def test_prefix_keeps_padding_keys_masked():
    """A 2-token prompt padded to 4 under prefix:4: the padding keys stay masked."""
    scores = causal_zero_scores(4)
    scores[..., :, 2:] = MIN  # padding keys (the model masks them for every query, itself too)
    got = torch.softmax(apply_mask(scores, AttentionMask.parse("prefix:4"),
                                   future=torch.zeros(1, 1, 4, 4)), -1)[0, 0]
    assert torch.allclose(got[:2], torch.tensor([[.5, .5, 0, 0], [.5, .5, 0, 0]]))


def hf_additive_mask(mask: AttentionMask, lengths: list[int], seq: int) -> torch.Tensor:
    """The same mask as a 4D additive attention mask for plain Hugging Face, with key padding."""
    allowed = mask.allowed(seq)[None] & (torch.arange(seq)[None, :] < torch.tensor(lengths)[:, None]
                                         )[:, None, :]
    bias = torch.where(allowed, mask.bias(seq)[None], torch.tensor(MIN))
    return bias[:, None]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("spec", ["window:3", "prefix:4", "decay:0.7", "causal"])
def test_masked_bridge_matches_hugging_face(arch, spec, request):
    """Patterns at every layer and logits of the masked bridge equal HF's with a 4D mask."""
    from transformers import AutoTokenizer

    from workbench.tiny import TinyConfig, build_tiny_hf_model, tiny_tokenizer_dir

    model = request.getfixturevalue(f"tiny_{arch}")
    hf = build_tiny_hf_model(TinyConfig(arch), len(AutoTokenizer.from_pretrained(
        tiny_tokenizer_dir())))
    mask = AttentionMask.parse(spec)
    ids = torch.tensor([[5, 9, 13, 17, 21, 25, 29, 33, 37], [40, 41, 42, 0, 0, 0, 0, 0, 0]])
    lengths, seq = [9, 3], ids.shape[1]
    seen = {}
    grab = [(f"blocks.{l}.attn.hook_pattern", lambda a, hook: seen.__setitem__(hook.name, a))
            for l in range(model.n_layers)]
    attention_mask = (torch.arange(seq)[None] < torch.tensor(lengths)[:, None]).long()
    with torch.inference_mode(), model.bridge.hooks(fwd_hooks=mask_hooks(model, mask) + grab):
        logits = model.bridge(ids, attention_mask=attention_mask)
    with torch.inference_mode():
        ref = hf(input_ids=ids, attention_mask=hf_additive_mask(mask, lengths, seq),
                 output_attentions=True)
    for b, n in enumerate(lengths):
        torch.testing.assert_close(logits[b, :n], ref.logits[b, :n], atol=2e-5, rtol=0)
        for layer, want in enumerate(ref.attentions):
            got = seen[f"blocks.{layer}.attn.hook_pattern"]
            torch.testing.assert_close(got[b, :, :n, :n], want[b, :, :n, :n], atol=1e-5, rtol=0)
            assert (got[b, :, :n, n:] == 0).all()  # no attention to padding
    assert not any(hp.fwd_hooks for hp in model.bridge.hook_dict.values())


def test_verify_mask_reports_and_caches(tiny_llama):
    report = verify_mask(tiny_llama, AttentionMask.parse("window:4"))
    assert report["n_tokens"] == 32 and report["pattern_max_abs_diff"] < 1e-6
    assert report["logits_max_abs_diff"] > 1e-3
    assert verify_mask(tiny_llama, AttentionMask.parse("window:4")) is report
    prefix = verify_mask(tiny_llama, AttentionMask.parse("prefix:8"))
    assert prefix["prefix_score_max_abs_diff"] < 1e-4


def test_verify_mask_raises_when_the_edit_does_not_take(tiny_gpt2, monkeypatch):
    monkeypatch.setattr(masks, "_VERIFIED", weakref.WeakKeyDictionary())
    # a pass-through attention: the score hooks fire but change nothing
    monkeypatch.setattr(masks, "mask_hooks", lambda model, mask: [])
    with pytest.raises(MaskNotApplied, match="layer 0's attention pattern is off the masked"):
        verify_mask(tiny_gpt2, AttentionMask.parse("decay:0.5"))
    # the pattern changes but the output does not: hooks that restore the clean attention output
    monkeypatch.undo()
    monkeypatch.setattr(masks, "_VERIFIED", weakref.WeakKeyDictionary())
    monkeypatch.setattr(masks, "_compare", _compare_with_unchanged_logits)
    with pytest.raises(MaskNotApplied, match="the logits did not change"):
        verify_mask(tiny_gpt2, AttentionMask.parse("window:2"))


_real_compare = masks._compare


def _compare_with_unchanged_logits(model, mask, seen, clean, masked, n, atol):
    return _real_compare(model, mask, seen, clean, clean.clone(), n, atol)


def test_run_level_mask_is_recorded_and_resume_refuses_another(capsys, tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", [
        {"id": "a", "text": "The quick brown fox jumps over the lazy dog and keeps running."},
        {"id": "b", "text": "Attention heads read the residual stream."}])
    runs = tmp_path / "runs"
    base = run_args(prompts, runs, "--probes", "position_bias", "--param", "position_bias.k=1",
                    "--run-id", "m")
    code, _, err = cli(capsys, *base, "--attention-mask", "window:2")
    assert code == 0, err
    [(run, manifest)] = list_runs(runs)
    assert manifest["config_key"]["attention_mask"] == "window:2"
    assert manifest["attention_mask"]["spec"] == "window:2"
    assert manifest["attention_mask"]["check"]["logits_max_abs_diff"] > 0
    table = run.read_table("position_bias").to_pandas()
    profile = table[(table.metric == "last_token_profile") & (table.layer == 0)
                    & (table.condition == "product")]
    # under window:2 the last token's layer-0 row has exactly two non-zero keys
    assert (profile.groupby("prompt_id").value.apply(lambda v: (v > 0).sum()) == 2).all()
    code, _, err = cli(capsys, *base, "--resume", "--attention-mask", "window:3")
    assert code == 2 and "configuration differs in attention_mask" in err
    code, _, err = cli(capsys, *base, "--resume")
    assert code == 2 and "configuration differs in attention_mask" in err
    code, _, err = cli(capsys, *run_args(prompts, tmp_path / "other", "--attention-mask",
                                         "window:x"))
    assert code == 2 and "'x' is not a number" in err and not (tmp_path / "other").exists()


def test_mask_reaches_probe_owned_forwards(tiny_llama, small_prompts, tmp_path):
    """An owns_forward probe's own forward passes run under the run's mask too."""
    import pyarrow as pa

    from probes.base import Probe
    from workbench.forward import last_logits
    from workbench.prompts import load_prompt_set
    from workbench.records import records
    from workbench.run import RunOptions, execute_run

    class LastLogitNorm(Probe):
        name, hook_points, units, owns_forward = "last_logit_norm", (), {}, True

        def params(self):
            return {}

        def run_batch(self, model, batch) -> pa.Table:
            norm = last_logits(model, batch).float().norm(dim=-1)
            return records("norm", norm.numpy(), prompt_id=pa.array(batch.prompt_ids))

    def norms(mask):
        run = execute_run(tiny_llama, load_prompt_set(small_prompts), [LastLogitNorm()],
                          RunOptions(runs_dir=tmp_path / str(mask), progress=False,
                                     attention_mask=mask))
        return run.read_table("last_logit_norm").to_pandas().set_index("prompt_id").value

    plain, masked, causal = norms(None), norms("window:1"), norms("causal")
    assert (plain - masked).abs().min() > 1e-3 and (plain - causal).abs().max() < 1e-5
    assert math.isfinite(masked.sum())
