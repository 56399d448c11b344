"""Composition scores between attention heads, from the weights alone (no prompts).

Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits"
(transformer-circuits.pub/2021/framework), as TransformerLens computes them
(``TransformerBridge.all_composition_scores``, ``utilities.composition_scores``). Row-vector
convention: a head's OV circuit is ``OV_h = W_V^h W_O^h`` and its QK circuit ``QK_h = W_Q^h
(W_K^h)^T``, both ``[d_model, d_model]`` of rank ``d_head``. For a sender ``h1`` in an earlier layer
than the receiver ``h2``::

    Q-composition  ||OV_h1 QK_h2||_F   / (||OV_h1||_F ||QK_h2||_F)
    K-composition  ||OV_h1 QK_h2^T||_F / (||OV_h1||_F ||QK_h2||_F)
    V-composition  ||OV_h1 OV_h2||_F   / (||OV_h1||_F ||OV_h2||_F)

Norm folding (METHODS.md section 10, as TransformerLens's ``fold_ln`` and
``center_writing_weights`` do): the weight of the norm in front of a head's layer is folded into its
``W_Q``, ``W_K`` and ``W_V`` (``diag(w) W``); for LayerNorm those are also centred over
``d_model`` (the norm's output has zero mean) and every ``W_O`` (and ``W_E``, ``W_pos``) is centred
on its output side (the next norm removes the mean anyway). The norm's scale ``1 / rms(x)`` depends
on the input and is left out, as in the paper. The final norm's weight is folded into ``W_U``,
which is centred over the vocabulary (a shift of every logit by the same amount changes no
prediction).

Grouped-query attention: query head ``h`` uses the ``W_K``, ``W_V`` of its group ``h // (n_heads /
n_key_value_heads)`` (as ``repeat_kv`` and TransformerLens's ``_expand_kv_heads`` do).

Baseline: the same score for random Gaussian matrices of the same shapes (factors ``[d_model,
d_head]`` and ``[d_head, d_model]``), mean and sd over seeded draws; a pair composes when its score
is well above it.

Per-head scores:

* ``ov_copying``: ``sum(lambda) / sum(|lambda|)`` over the eigenvalues of the full OV circuit
  ``W_E W_V W_O W_U`` (``[d_vocab, d_vocab]``), computed as the ``[d_head, d_head]`` product
  ``W_O W_U W_E W_V``, whose non-zero eigenvalues are the same; 1 for a head that copies the tokens
  it attends to (Elhage et al. 2021, "copying" heads).
* ``qk_previous_token``: with learned absolute positions only, the attention a head's positional
  QK circuit ``W_pos W_Q (W_pos W_K)^T / sqrt(d_head)`` puts on the previous position (causal
  softmax, mean over query positions 1..63). Rotary models (SmolLM2) have no position matrix: the
  score is not defined there and is not written.

Computation: ``||A1 B1 A2 B2||_F = ||R1 B1 A2 R2^T||_F`` with ``A1 = Q1 R1`` and ``B2^T = Q2 R2``
(QR), so each head is a ``[d_head, d_model]`` sender factor ``S = R1 B1`` and a ``[d_model,
d_head]`` receiver factor ``T = A2 R2^T``; ``||S T||_F^2 = <S^T S, T T^T>`` makes every pair one
inner product of ``d_model x d_model`` Gram matrices (float64).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from workbench.heads import format_head
from workbench.records import concat, records, string_column

MODES = ("q", "k", "v")
METRICS = {m: f"{m}_composition" for m in MODES}
UNITS = {**{METRICS[m]: "||OV_h1 M_h2||_F / (||OV_h1||_F ||M_h2||_F), fraction" for m in MODES},
         "ov_copying": "sum(eigenvalues) / sum(|eigenvalues|) of W_E W_V W_O W_U, in [-1, 1]",
         "qk_previous_token": "fraction of positional attention on the previous position"}
SOURCE = ("Elhage et al. 2021, A Mathematical Framework for Transformer Circuits "
          "(transformer-circuits.pub/2021/framework); TransformerLens all_composition_scores")
N_BASELINE = 200  # random draws of the baseline
POSITIONS = 64  # positions of the positional QK score


@dataclass
class FoldedWeights:
    """The model's weights with the norms folded in (module docstring), float64 on the CPU.

    Shapes: ``W_Q``, ``W_K``, ``W_V`` ``[n_layers, n_heads, d_model, d_head]`` (K and V expanded
    per query head), ``W_O`` ``[n_layers, n_heads, d_head, d_model]``, ``W_E`` ``[d_vocab,
    d_model]``, ``W_U`` ``[d_model, d_vocab]``, ``W_pos`` ``[n_ctx, d_model]`` or ``None``
    (rotary). ``norm``: ``rms``, ``rms_one_plus`` or ``layer``.
    """

    W_Q: torch.Tensor
    W_K: torch.Tensor
    W_V: torch.Tensor
    W_O: torch.Tensor
    W_E: torch.Tensor
    W_U: torch.Tensor
    W_pos: torch.Tensor | None
    norm: str

    @property
    def n_layers(self) -> int:
        return int(self.W_Q.shape[0])

    @property
    def n_heads(self) -> int:
        return int(self.W_Q.shape[1])

    @property
    def d_model(self) -> int:
        return int(self.W_Q.shape[2])

    @property
    def d_head(self) -> int:
        return int(self.W_Q.shape[3])


def _norm(module):
    return getattr(module, "original_component", module)


def _norm_weight(module, d_model: int) -> tuple[str, torch.Tensor]:
    """(form, effective weight ``[d_model]``) of a norm, identified by reproducing its output."""
    from circuits.dla import _norm_form

    gen = torch.Generator().manual_seed(0)
    norm = _norm(module)
    param = next(norm.parameters(), None)
    x = torch.randn(4, d_model, generator=gen, dtype=torch.float32)
    if param is not None:
        x = x.to(device=param.device, dtype=param.dtype)
    form, weight, _, _ = _norm_form(norm, x)
    return form, weight.detach().double().cpu()


def folded_weights(model) -> FoldedWeights:
    """Read ``model``'s (a :class:`workbench.models.LoadedModel`) attention, embedding and
    unembedding weights from its bridge and fold the norms in (module docstring).

    Raises:
        WorkbenchError: a norm that is none of RMSNorm, RMSNorm(1 + w), LayerNorm.
    """
    bridge = model.bridge
    group = model.info.n_heads // model.info.n_key_value_heads

    def stacked(name: str) -> torch.Tensor:
        return getattr(bridge, name).detach().double().cpu()

    W_Q, W_K, W_V, W_O = (stacked(n) for n in ("W_Q", "W_K", "W_V", "W_O"))
    if W_K.shape[1] != W_Q.shape[1]:
        W_K, W_V = (w.repeat_interleave(group, dim=1) for w in (W_K, W_V))
    d_model = W_Q.shape[2]
    forms, weights = zip(*(_norm_weight(block.ln1, d_model) for block in bridge.blocks))
    w = torch.stack(weights)[:, None, :, None]  # [layer, 1, d_model, 1]
    W_Q, W_K, W_V = (w * W for W in (W_Q, W_K, W_V))
    final_form, w_final = _norm_weight(bridge.ln_final, d_model)
    W_E = bridge.W_E.detach().double().cpu()
    W_U = w_final[:, None] * bridge.W_U.detach().double().cpu()
    W_U = W_U - W_U.mean(1, keepdim=True)
    try:
        W_pos = bridge.W_pos.detach().double().cpu()
    except AttributeError:
        W_pos = None
    layer_norm = final_form == "layer" or "layer" in forms
    if layer_norm:  # LayerNorm output has zero mean: centre readers and writers (TL's folding)
        W_Q, W_K, W_V = (W - W.mean(2, keepdim=True) for W in (W_Q, W_K, W_V))
        W_O = W_O - W_O.mean(3, keepdim=True)
        W_E = W_E - W_E.mean(1, keepdim=True)
        W_pos = None if W_pos is None else W_pos - W_pos.mean(1, keepdim=True)
    return FoldedWeights(W_Q, W_K, W_V, W_O, W_E, W_U, W_pos, final_form)


def _r_factor(a: torch.Tensor) -> torch.Tensor:
    """R of the reduced QR of ``a`` ``[..., d_model, d_head]`` (``[..., d_head, d_head]``)."""
    return torch.linalg.qr(a, mode="r").R


def factors(w: FoldedWeights) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Sender factors ``S [n_layers, n_heads, d_head, d_model]`` (``||S||_F = ||OV||_F``) and per
    mode the receiver factors ``T [n_layers, n_heads, d_model, d_head]`` (module docstring)."""
    S = _r_factor(w.W_V) @ w.W_O  # OV = W_V W_O
    T = {"q": w.W_Q @ _r_factor(w.W_K).transpose(-1, -2),  # QK = W_Q W_K^T
         "k": w.W_K @ _r_factor(w.W_Q).transpose(-1, -2),  # QK^T = W_K W_Q^T
         "v": w.W_V @ _r_factor(w.W_O.transpose(-1, -2)).transpose(-1, -2)}  # OV = W_V W_O
    return S, T


def _packed_gram(x: torch.Tensor, *, left: bool, chunk: int = 32) -> torch.Tensor:
    """Upper triangles of the Gram matrices ``x^T x`` (``left``: ``x [n, r, d]``) or ``x x^T``
    (``x [n, d, r]``), ``[n, d (d + 1) / 2]``, off-diagonal entries doubled on the left side so
    that ``packed_left @ packed_right.T`` is the Frobenius inner product of the Grams."""
    n, d = x.shape[0], x.shape[2] if left else x.shape[1]
    rows, cols = torch.triu_indices(d, d)
    scale = torch.where(rows == cols, 1.0, 2.0).double() if left else None
    out = torch.empty(n, rows.numel(), dtype=torch.float64)
    for start in range(0, n, chunk):
        part = x[start:start + chunk]
        gram = part.transpose(-1, -2) @ part if left else part @ part.transpose(-1, -2)
        packed = gram[:, rows, cols]
        out[start:start + chunk] = packed * scale if left else packed
    return out


def composition_scores(w: FoldedWeights, modes: tuple[str, ...] = MODES, *,
                       chunk: int = 64) -> dict[str, np.ndarray]:
    """Per mode ``[n_layers, n_heads, n_layers, n_heads]`` scores ``[sender layer, sender head,
    receiver layer, receiver head]``, NaN unless the sender's layer is earlier (the layout of
    TransformerLens's ``all_composition_scores``, which writes 0 there)."""
    L, H = w.n_layers, w.n_heads
    S, T = factors(w)
    S, s_norm = S.reshape(L * H, *S.shape[2:]), S.reshape(L * H, -1).norm(dim=1)
    gram_s = _packed_gram(S, left=True)
    layer = torch.arange(L).repeat_interleave(H)
    out = {}
    for mode in modes:
        Tm = T[mode].reshape(L * H, *T[mode].shape[2:])
        t_norm = Tm.reshape(L * H, -1).norm(dim=1)
        gram_t = _packed_gram(Tm, left=False)
        sq = torch.zeros(L * H, L * H, dtype=torch.float64)
        for start in range(0, L * H, chunk):
            later = int((layer <= layer[start]).sum())  # receivers after the chunk's first layer
            sq[start:start + chunk, later:] = gram_s[start:start + chunk] @ gram_t[later:].T
        score = sq.clamp_min(0).sqrt() / s_norm[:, None] / t_norm[None, :]
        score[layer[:, None] >= layer[None, :]] = float("nan")
        out[mode] = score.reshape(L, H, L, H).numpy()
    return out


def random_baseline(d_model: int, d_head: int, *, n: int = N_BASELINE, seed: int = 0
                    ) -> dict[str, float]:
    """Mean and sd of the composition score of random Gaussian factors of the model's shapes
    (``[d_model, d_head] @ [d_head, d_model]`` on both sides), over ``n`` seeded draws. The score
    is the same for Q, K and V composition (the shapes are)."""
    gen = torch.Generator().manual_seed(seed)
    a1, a2 = (torch.randn(n, d_model, d_head, generator=gen, dtype=torch.float64)
              for _ in range(2))
    b1, b2 = (torch.randn(n, d_head, d_model, generator=gen, dtype=torch.float64)
              for _ in range(2))
    # ||A1 B1 A2 B2||^2 = tr(M^T G1 M G2) with M = B1 A2, G1 = A1^T A1, G2 = B2 B2^T (d_head^2)
    g1, g2, m = a1.transpose(1, 2) @ a1, b2 @ b2.transpose(1, 2), b1 @ a2
    tr = lambda x: x.diagonal(dim1=-2, dim2=-1).sum(-1)  # noqa: E731
    product = tr(m.transpose(1, 2) @ g1 @ m @ g2)
    left = tr(g1 @ b1 @ b1.transpose(1, 2))
    right = tr(a2.transpose(1, 2) @ a2 @ g2)
    score = (product / left / right).sqrt()
    return {"mean": float(score.mean()), "sd": float(score.std()), "n": n, "seed": seed,
            "shapes": f"[{d_model}x{d_head}] @ [{d_head}x{d_model}] per side"}


def ov_copying(w: FoldedWeights) -> np.ndarray:
    """``[n_layers, n_heads]``: ``sum(lambda) / sum(|lambda|)`` over the eigenvalues of ``W_O W_U
    W_E W_V`` (module docstring)."""
    middle = (w.W_U.float() @ w.W_E.float()).double()  # [d_model, d_model]; float32 is ample
    M = w.W_O @ middle @ w.W_V  # [layer, head, d_head, d_head]
    eig = torch.linalg.eigvals(M)
    return (eig.sum(-1).real / eig.abs().sum(-1).clamp_min(1e-300)).numpy()


def qk_previous_token(w: FoldedWeights, positions: int = POSITIONS) -> np.ndarray | None:
    """``[n_layers, n_heads]`` positional previous-token score (module docstring), or ``None``
    for a model without a learned position matrix."""
    if w.W_pos is None:
        return None
    n = min(positions, w.W_pos.shape[0])
    P = w.W_pos[:n]
    scores = (P @ w.W_Q) @ (P @ w.W_K).transpose(-1, -2) / w.d_head ** 0.5  # [L, H, n, n]
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    pattern = scores.masked_fill(~causal, float("-inf")).softmax(-1)
    prev = pattern.diagonal(offset=-1, dim1=-2, dim2=-1)  # [L, H, n - 1]
    return prev.mean(-1).numpy()


@dataclass
class Composition:
    """Every composition score of a model. ``scores[mode]``: ``[sender layer, sender head,
    receiver layer, receiver head]`` (NaN unless the sender is earlier); ``per_head``: metric ->
    ``[n_layers, n_heads]``; ``baseline``: :func:`random_baseline`."""

    scores: dict[str, np.ndarray]
    per_head: dict[str, np.ndarray]
    baseline: dict
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # CPU time of this process (all threads): fairer on a busy machine

    def pairs(self, mode: str) -> "pd.DataFrame":  # noqa: F821
        """One row per (sender, receiver) with a score: ``sender_layer, sender_head,
        receiver_layer, receiver_head, score``, highest score first."""
        import pandas as pd

        s = self.scores[mode]
        idx = np.argwhere(np.isfinite(s))
        frame = pd.DataFrame(idx, columns=["sender_layer", "sender_head", "receiver_layer",
                                           "receiver_head"])
        frame["score"] = s[tuple(idx.T)]
        return frame.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)

    def table(self) -> pa.Table:
        """The records (:mod:`workbench.records`): ``<mode>_composition`` with ``layer``/``head``
        the receiver and ``condition = "sender=" + format_head(sender)``; per-head metrics with
        ``condition`` null; ``composition_baseline`` (``condition`` ``mean`` / ``sd``)."""
        tables = []
        for mode, s in self.scores.items():
            idx = np.argwhere(np.isfinite(s))
            senders = sorted({(int(a), int(b)) for a, b in idx[:, :2]})
            where = {h: i for i, h in enumerate(senders)}
            labels = [f"sender={format_head(h)}" for h in senders]
            cond = string_column(labels, np.array([where[(int(a), int(b))] for a, b in idx[:, :2]]))
            tables.append(records(METRICS[mode], s[tuple(idx.T)], layer=idx[:, 2],
                                  head=idx[:, 3], condition=cond))
        for metric, values in self.per_head.items():
            L, H = values.shape
            tables.append(records(metric, values.ravel(), layer=np.repeat(np.arange(L), H),
                                  head=np.tile(np.arange(H), L)))
        tables.append(records("composition_baseline", [self.baseline["mean"],
                                                       self.baseline["sd"]],
                              condition=pa.array(["mean", "sd"])))
        return concat(tables)


def compose(model, *, baseline_draws: int = N_BASELINE, seed: int = 0) -> Composition:
    """Fold the weights and compute every score (module docstring)."""
    import time

    start, cpu = time.perf_counter(), time.process_time()
    w = folded_weights(model)
    with torch.inference_mode():
        scores = composition_scores(w)
        per_head = {"ov_copying": ov_copying(w)}
        prev = qk_previous_token(w)
        if prev is not None:
            per_head["qk_previous_token"] = prev
        base = random_baseline(w.d_model, w.d_head, n=baseline_draws, seed=seed)
    return Composition(scores, per_head, base, round(time.perf_counter() - start, 3),
                       round(time.process_time() - cpu, 3))
