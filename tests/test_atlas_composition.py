"""Composition scores (atlas.composition) against the formula on hand-made matrices and against
TransformerLens's own ``all_composition_scores`` on tiny GPT-2 and Llama models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atlas.composition import (FoldedWeights, composition_scores, ov_copying, qk_previous_token,
                               random_baseline)


def _hand_made(seed=0, L=3, H=2, d=6, dh=2, pos=False):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)
    return FoldedWeights(r(L, H, d, dh), r(L, H, d, dh), r(L, H, d, dh), r(L, H, dh, d),
                         r(11, d), r(d, 11), r(8, d) if pos else None, "rms")


def _fro(m):
    return np.linalg.norm(m)


def test_composition_scores_equal_the_formula_on_hand_made_matrices():
    w = _hand_made()
    got = composition_scores(w)
    Q, K, V, O = (x.numpy() for x in (w.W_Q, w.W_K, w.W_V, w.W_O))
    for l1 in range(3):
        for h1 in range(2):
            ov1 = V[l1, h1] @ O[l1, h1]
            for l2 in range(3):
                for h2 in range(2):
                    cell = (l1, h1, l2, h2)
                    if l1 >= l2:
                        assert all(np.isnan(got[m][cell]) for m in "qkv")
                        continue
                    qk, ov2 = Q[l2, h2] @ K[l2, h2].T, V[l2, h2] @ O[l2, h2]
                    for mode, right in (("q", qk), ("k", qk.T), ("v", ov2)):
                        want = _fro(ov1 @ right) / (_fro(ov1) * _fro(right))
                        assert got[mode][cell] == pytest.approx(want, rel=1e-10), (mode, cell)


def test_ov_copying_and_positional_scores_on_hand_made_matrices():
    w = _hand_made(pos=True)
    got = ov_copying(w)
    for layer in range(3):
        for h in range(2):
            full = (w.W_E @ w.W_V[layer, h] @ w.W_O[layer, h] @ w.W_U).numpy()
            ev = np.linalg.eigvals(full)
            # W_U W_E is formed in float32 (ov_copying): agreement to float32 precision
            assert got[layer, h] == pytest.approx(ev.sum().real / np.abs(ev).sum(), abs=1e-5)
    # W_O W_U W_E W_V = identity: every eigenvalue 1, a perfect copier
    w.W_U = torch.linalg.pinv(w.W_E)
    w.W_O[0, 0] = torch.linalg.pinv(w.W_V[0, 0])
    assert ov_copying(w)[0, 0] == pytest.approx(1.0)
    prev = qk_previous_token(w, positions=8)
    P = w.W_pos.numpy()
    s = (P @ w.W_Q[1, 0].numpy()) @ (P @ w.W_K[1, 0].numpy()).T / np.sqrt(2)
    s = np.where(np.tril(np.ones((8, 8))) > 0, s, -np.inf)
    a = np.exp(s - s.max(1, keepdims=True))
    a /= a.sum(1, keepdims=True)
    assert prev[1, 0] == pytest.approx(np.mean([a[i, i - 1] for i in range(1, 8)]))
    assert qk_previous_token(_hand_made()) is None  # rotary: no position matrix


def test_random_baseline_is_seeded_and_near_its_expectation():
    a, b = random_baseline(64, 16, n=100, seed=1), random_baseline(64, 16, n=100, seed=1)
    assert a == b and a["n"] == 100
    # for independent Gaussian factors E||L R||^2 = ||L||^2 ||R||^2 / d on average: sqrt(1/d)
    assert a["mean"] == pytest.approx(np.sqrt(1 / 64), rel=0.1) and a["sd"] < a["mean"] / 5


@pytest.mark.parametrize("spec", ["tiny-gpt2", "tiny-llama"])
def test_composition_scores_equal_transformer_lens(spec, request):
    """The same model loaded twice: ours folds the norms by hand on the raw weights; TL's
    compatibility mode folds them itself (fold_ln, centring) and scores with FactoredMatrix."""
    from atlas.composition import compose
    from workbench.models import load_model

    ours = compose(request.getfixturevalue(spec.replace("-", "_")))  # the session's raw model
    ref = load_model(spec, device="cpu")  # a second copy, processed in place by TL
    ref.bridge.enable_compatibility_mode(disable_warnings=True)
    for mode in "QKV":
        tl = ref.bridge.all_composition_scores(mode).scores.detach().double().numpy()
        mine = ours.scores[mode.lower()]
        later = np.isfinite(mine)
        assert later.sum() == 6 * 16  # 4 layers: 6 layer pairs x 4 x 4 heads
        np.testing.assert_allclose(mine[later], tl[later], rtol=1e-5, atol=1e-7, err_msg=mode)
        assert (tl[~later] == 0).all()
    b = ref.bridge
    with torch.no_grad():
        full = b.W_E.double() @ b.OV.AB.double() @ b.W_U.double()  # [layer, head, vocab, vocab]
        ev = torch.linalg.eigvals(full)
    want = (ev.sum(-1).real / ev.abs().sum(-1)).numpy()
    np.testing.assert_allclose(ours.per_head["ov_copying"], want, atol=1e-6)
    assert ("qk_previous_token" in ours.per_head) == (spec == "tiny-gpt2")
