"""Patching grids per layer x position and direct logit attribution, against independent
computations: a full forward per cell with an ordinary hook, plain Hugging Face hooks on the real
model, and the exact sum of the direct contributions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from circuits.dla import direct_logit_attribution
from circuits import grids as grids_module
from circuits.grid_pack import chunks
from circuits.grids import (COMPONENTS, grid_offsets, naive_patching_grid, parse_components,
                            parse_grid_layers, patching_grid)
from circuits.tasks import load_task
from tests.circuit_tasks import tiny_ioi_file
from tests.float64 import float64_model
from workbench.errors import InputError, WorkbenchError
from workbench.metrics import logit_diff

DIRECTIONS = ["corrupted_into_clean", "clean_into_corrupted"]


@pytest.fixture(scope="module")
def task_path(tmp_path_factory):
    return tiny_ioi_file(tmp_path_factory.mktemp("grid_tasks"), n=5)


@pytest.mark.parametrize("component", COMPONENTS)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_grid_equals_one_full_forward_per_cell(tiny_llama, task_path, component, direction):
    task = load_task(str(task_path), tiny_llama)
    grid = patching_grid(tiny_llama, task, component, direction=direction, batch_size=4)
    want = naive_patching_grid(tiny_llama, task, component, direction=direction, batch_size=4)
    np.testing.assert_allclose(grid.effects.patched, want, atol=2e-5)
    assert np.abs(grid.effects.patched - grid.effects.base[:, None, None]).max() > 0.1
    batched = patching_grid(tiny_llama, task, component, direction=direction, batch_size=4,
                            positions_per_forward=3, layers=[1, 3])
    np.testing.assert_allclose(batched.effects.patched[:, [1, 3]],
                               grid.effects.patched[:, [1, 3]], atol=2e-5)
    assert np.isnan(batched.effects.patched[:, [0, 2]]).all()


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_packed_grid_equals_one_cell_per_forward_in_float64(tiny_llama, task_path, monkeypatch,
                                                            direction):
    """The packed cells (each from its patched position on, a layer's cells in one pass) equal
    one resumed whole-sequence forward per cell, to float64 rounding; in chunks of 2 cells too."""
    task = load_task(str(task_path), tiny_llama)
    packed_calls = []
    real = grids_module.packed_logits
    monkeypatch.setattr(grids_module, "packed_logits",
                        lambda *a, **k: packed_calls.append(1) or real(*a, **k))
    with float64_model(tiny_llama, monkeypatch):
        for component in COMPONENTS:
            one = patching_grid(tiny_llama, task, component, direction=direction, batch_size=3,
                                packed=False, positions_per_forward=1)
            calls = len(packed_calls)
            got = patching_grid(tiny_llama, task, component, direction=direction, batch_size=3)
            n_batches = len(task.batches(3))
            assert len(packed_calls) - calls == tiny_llama.info.n_layers * n_batches  # 1/layer
            pairs = patching_grid(tiny_llama, task, component, direction=direction,
                                  batch_size=3, packed=True, positions_per_forward=2)
            assert np.isfinite(one.effects.patched).all()
            np.testing.assert_allclose(got.effects.patched, one.effects.patched, atol=1e-9)
            np.testing.assert_allclose(pairs.effects.patched, one.effects.patched, atol=1e-9)
            assert np.abs(got.effects.patched - got.effects.base[:, None, None]).max() > 0.1


def test_architectures_that_cannot_pack_use_the_per_cell_forward(tiny_gpt2, task_path):
    """GPT-2's blocks take the mask as a positional argument: the grid falls back to one forward
    per cell (same numbers); asking for packing says why it cannot."""
    task = load_task(str(task_path), tiny_gpt2)
    got = patching_grid(tiny_gpt2, task, "attn_out", batch_size=4, layers=[0, 2])
    want = patching_grid(tiny_gpt2, task, "attn_out", batch_size=4, layers=[0, 2], packed=False)
    np.testing.assert_array_equal(got.effects.patched, want.effects.patched)
    with pytest.raises(WorkbenchError, match="cannot be packed"):
        patching_grid(tiny_gpt2, task, "attn_out", batch_size=4, layers=[0], packed=True)


def test_chunks_bound_the_packed_rows():
    assert chunks([-3, -2, -1], batch=2, seq=3, n_heads=4) == [[-3, -2, -1]]
    assert chunks([-3, -2, -1], batch=2, seq=3, n_heads=4, max_cells=2) == [[-3, -2], [-1]]
    big = chunks(list(range(-600, 0)), batch=1, seq=600, n_heads=1)
    assert all(sum(-o for o in group) <= 600 for group in big)
    assert [o for group in big for o in group] == list(range(-600, 0))
    assert all(len(g) == 1 or sum(-o for o in g) <= 512 for g in big)  # long cells alone


def test_grid_layers_are_parsed_and_bounded():
    assert parse_grid_layers("14, 0,14") == (0, 14) and parse_grid_layers(["3", "1,2"]) == (1, 2, 3)
    assert parse_grid_layers(None) is None and parse_grid_layers("") is None
    with pytest.raises(InputError, match="'x' is not a layer index"):
        parse_grid_layers("1,x")
    with pytest.raises(InputError, match="'-1' is not a layer index"):
        parse_grid_layers("-1")
    with pytest.raises(InputError, match="at most 1024"):
        parse_grid_layers(",".join(["1"] * 1025))


def test_grid_cells_where_clean_and_corrupted_agree_change_nothing(tiny_llama, task_path):
    """At layer 0 the residual stream is the token embedding: patching it where the clean and
    corrupted tokens are equal leaves the logit difference exactly as it was."""
    task = load_task(str(task_path), tiny_llama)
    grid = patching_grid(tiny_llama, task, "resid_pre", layers=[0], batch_size=8)
    offsets = grid_offsets(task)
    same = np.array([[c.input_ids[len(c.input_ids) + o] == x.input_ids[len(x.input_ids) + o]
                      for o in offsets] for c, x in zip(task.clean, task.corrupted)])
    assert same.any() and (~same).any()
    moved = np.abs(grid.effects.patched[:, 0] - grid.effects.clean[:, None])
    assert moved[same].max() < 1e-5
    assert moved[~same].max() > 0.1
    table = grid.records().to_pandas()
    assert set(table["metric"]) == {"logit_diff", "effect", "score", "score_lo", "score_hi"}
    scores = table[table.metric == "score"]
    assert len(scores) == len(offsets) and (scores["layer"] == 0).all()
    np.testing.assert_allclose(scores.sort_values("query_pos")["value"], grid.score[0])
    assert scores["condition"].iloc[0] == "resid_pre; corrupted_into_clean"


def _hf_cell(hf, tb, component: str, layer: int, offset: int) -> np.ndarray:
    """Plain Hugging Face: the corrupted run's activation at one position into the clean run."""
    module = {"resid_pre": hf.model.layers[layer], "attn_out": hf.model.layers[layer].self_attn,
              "mlp_out": hf.model.layers[layer].mlp}[component]
    rows = torch.arange(tb.clean.size)
    pos = tb.clean.last_pos() + 1 + offset
    kept = {}

    def grab(m, args, kwargs, out=None):
        x = (kwargs.get("hidden_states", args[0] if args else None) if out is None
             else (out[0] if isinstance(out, tuple) else out))
        kept.setdefault("x", x.detach().clone())

    def put_pre(m, args, kwargs):
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        hidden = hidden.clone()
        hidden[rows, pos] = kept["x"][rows, pos]
        if "hidden_states" in kwargs:
            return args, {**kwargs, "hidden_states": hidden}
        return (hidden, *args[1:]), kwargs

    def put_out(m, args, kwargs, out):
        x = (out[0] if isinstance(out, tuple) else out).clone()
        x[rows, pos] = kept["x"][rows, pos]
        return (x, *out[1:]) if isinstance(out, tuple) else x

    pre = component == "resid_pre"
    handle = (module.register_forward_pre_hook(grab, with_kwargs=True) if pre
              else module.register_forward_hook(grab, with_kwargs=True))
    with torch.inference_mode():
        hf(input_ids=tb.corrupted.input_ids, attention_mask=tb.corrupted.attention_mask)
    handle.remove()
    handle = (module.register_forward_pre_hook(put_pre, with_kwargs=True) if pre
              else module.register_forward_hook(put_out, with_kwargs=True))
    try:
        with torch.inference_mode():
            logits = hf(input_ids=tb.clean.input_ids, attention_mask=tb.clean.attention_mask).logits
    finally:
        handle.remove()
    return logit_diff(logits[rows, tb.clean.last_pos()], tb.answer, tb.distractor).numpy()


def test_real_model_grid_cells_match_plain_hugging_face(smollm2, smollm2_hf):
    task = load_task("ioi", smollm2, n_prompts=4)
    tb = task.batches(4)[0]
    for component, layers in (("resid_pre", [0, 14]), ("attn_out", [9]), ("mlp_out", [0, 29])):
        grid = patching_grid(smollm2, task, component, layers=layers, batch_size=4)
        assert grid.effects.patched.shape == (4, 30, len(grid_offsets(task)))
        for layer in layers:
            for c, offset in [(0, int(grid.offsets[0])), (-3, -3), (-1, -1)]:
                want = _hf_cell(smollm2_hf, tb, component, layer, offset)
                np.testing.assert_allclose(grid.effects.patched[tb.index, layer, c], want,
                                           atol=1e-4)


def test_components_and_layers_are_checked(tiny_llama, task_path):
    assert parse_components("all") == COMPONENTS
    assert parse_components("mlp_out, resid_pre") == ("mlp_out", "resid_pre")
    assert parse_components(None) == ()
    with pytest.raises(InputError, match="unknown component.*'resid_post'"):
        parse_components("resid_pre,resid_post")
    with pytest.raises(InputError, match="twice"):
        parse_components("mlp_out,mlp_out")
    task = load_task(str(task_path), tiny_llama)
    with pytest.raises(InputError, match=r"grid layers \[7\].*0\.\.3"):
        patching_grid(tiny_llama, task, "resid_pre", layers=[1, 7])


@pytest.mark.parametrize("which, norm", [("tiny_llama", "rms"), ("tiny_gpt2", "layer")])
def test_dla_sums_to_the_logit_difference(which, norm, request, task_path):
    model = request.getfixturevalue(which)
    task = load_task(str(task_path), model)
    dla = direct_logit_attribution(model, task, batch_size=2)
    assert dla.norm == norm
    np.testing.assert_allclose(dla.total(), dla.logit_diff, atol=1e-4)
    assert np.abs(dla.logit_diff).min() > 0.01 and np.abs(dla.heads).max() > 0.01
    table = dla.records().to_pandas()
    means = table[(table.metric == "dla_mean") & (table.condition == "head")]
    assert len(means) == model.info.n_layers * model.info.n_heads
    one = means[(means.layer == 1) & (means["head"] == 2)]["value"].item()
    assert one == pytest.approx(dla.heads[:, 1, 2].mean())
    lo = table[(table.metric == "dla_lo") & (table.condition == "mlp")].sort_values("layer")
    assert (lo["value"].to_numpy() <= dla.mlps.mean(0) + 1e-12).all()


def test_real_model_dla_per_head_matches_plain_hugging_face(smollm2, smollm2_hf):
    """Per head: its slice of o_proj's input times its block of W_O, at the last token, through
    the final RMSNorm with the scale of this run, onto W_U[answer] - W_U[distractor]."""
    task = load_task("ioi", smollm2, n_prompts=4)
    tb = task.batches(4)[0]
    dla = direct_logit_attribution(smollm2, task, batch_size=4)
    hf, d_head = smollm2_hf, smollm2.info.d_head
    rows, last = torch.arange(tb.clean.size), tb.clean.last_pos()
    kept = {}

    def keep(key):
        def pre_hook(module, args):
            kept.setdefault(key, args[0][rows, last].double())
        return pre_hook
    handles = [hf.model.norm.register_forward_pre_hook(keep("final"))]
    for layer in (9, 21, 23):
        handles.append(hf.model.layers[layer].self_attn.o_proj.register_forward_pre_hook(
            keep(layer)))
    with torch.no_grad():
        hf(input_ids=tb.clean.input_ids, attention_mask=tb.clean.attention_mask)
    for h in handles:
        h.remove()
    with torch.no_grad():
        final = kept["final"]
        scale = torch.sqrt(final.pow(2).mean(-1, keepdim=True) + hf.model.norm.variance_epsilon)
        w_u = hf.lm_head.weight.double()
        u = (w_u[tb.answer] - w_u[tb.distractor]) * hf.model.norm.weight.double() / scale
        for layer in (9, 21, 23):
            w_o = hf.model.layers[layer].self_attn.o_proj.weight.double()
            for head in range(smollm2.info.n_heads):
                cut = slice(head * d_head, (head + 1) * d_head)
                out = kept[layer][:, cut] @ w_o[:, cut].T
                np.testing.assert_allclose(dla.heads[tb.index, layer, head],
                                           (out * u).sum(-1).numpy(), atol=1e-4)
    np.testing.assert_allclose(dla.total(), dla.logit_diff, atol=1e-3)
