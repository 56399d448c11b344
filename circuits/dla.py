"""Direct logit attribution (DLA) per attention head and per MLP (Elhage et al. 2021, "A
Mathematical Framework for Transformer Circuits"; Wang et al. 2022, arXiv 2211.00593, Fig. 3;
TransformerLens's ``ActivationCache.logit_attrs``).

The residual stream at a prompt's last token is a sum of component outputs: the embedding, every
head's output ``z_h W_O^h`` (``hook_result``), each layer's attention bias, every MLP's output. The
final norm is linear in its input once its scale is frozen at the value of this run, so the logit
difference splits exactly into one term per component::

    LD = sum_c  u . N_s(x_c)  +  u . b_norm + (b_U[answer] - b_U[distractor])

with ``u = W_U[answer] - W_U[distractor]``, ``N_s(x) = w * P(x) / s`` the final norm with the scale
``s`` frozen (``P`` the identity for RMSNorm, centring for LayerNorm; Gemma's weight is ``1 + w``).
The form of the final norm is identified by comparing each candidate with the module's own output
on this run; the decomposition is checked to sum to the model's logit difference, and a model where
it does not (e.g. a final logit soft-cap) is refused. DLA is a direct effect only: a head whose
output is read by later heads (IOI's S-inhibition heads) can have a small DLA and a large total
effect (activation patching).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

from circuits.tasks import Task, TaskBatch
from workbench.errors import WorkbenchError
from workbench.forward import HookList
from workbench.forward import logits as run_logits
from workbench.interventions.hooks import attn_result
from workbench.metrics import last_token_logits, logit_diff
from workbench.records import concat, records, string_column
from workbench.stats import N_RESAMPLES, bootstrap_mean_ci

CLOSURE_TOLERANCE = 1e-3  # logits (fp32); 5e-2 in half precision


@dataclass
class DirectLogitAttribution:
    """Per-prompt direct contributions to the logit difference, in logits.

    Attributes:
        heads: ``[n_prompts, n_layers, n_heads]`` each head's DLA.
        mlps: ``[n_prompts, n_layers]`` each MLP's DLA.
        attn_bias: ``[n_prompts, n_layers]`` each attention layer's output bias (0 without one).
        embed: ``[n_prompts]`` the embedding's (token and position) DLA.
        constant: ``[n_prompts]`` the final norm's bias and the unembedding bias.
        logit_diff: ``[n_prompts]`` the model's logit difference (the sum of all the above).
        norm: the final norm's form (``rms``, ``rms_one_plus`` or ``layer``).
    """

    task: str
    heads: np.ndarray
    mlps: np.ndarray
    attn_bias: np.ndarray
    embed: np.ndarray
    constant: np.ndarray
    logit_diff: np.ndarray
    prompt_ids: list[str]
    norm: str

    def total(self) -> np.ndarray:
        """``[n_prompts]`` the sum of every component (equals :attr:`logit_diff`)."""
        return (self.heads.sum((1, 2)) + self.mlps.sum(1) + self.attn_bias.sum(1) + self.embed
                + self.constant)

    def records(self) -> pa.Table:
        """Rows (``segment`` = task): ``dla`` per (prompt, component) with ``condition`` ``head``
        (layer, head), ``mlp`` / ``attn_bias`` (layer), ``embed`` / ``constant``; ``dla_mean`` and
        its 95% bootstrap interval over prompts ``dla_lo`` / ``dla_hi`` per component (prompt
        null); ``logit_diff`` per prompt (the model's)."""
        n, n_layers, n_heads = self.heads.shape
        parts = []
        layer, head = np.divmod(np.arange(n_layers * n_heads), n_heads)
        layers = np.arange(n_layers)
        groups = [("head", self.heads.reshape(n, -1), dict(layer=layer, head=head)),
                  ("mlp", self.mlps, dict(layer=layers)),
                  ("attn_bias", self.attn_bias, dict(layer=layers)),
                  ("embed", self.embed[:, None], {}), ("constant", self.constant[:, None], {})]
        for condition, values, cols in groups:
            k = values.shape[1]
            common = dict(segment=self.task, condition=condition)
            tiled = {c: np.tile(v, n) for c, v in cols.items()}
            parts.append(records("dla", values.reshape(-1), **tiled, **common,
                                 prompt_id=string_column(self.prompt_ids,
                                                         np.repeat(np.arange(n), k))))
            lo, hi = bootstrap_mean_ci(values, n_boot=N_RESAMPLES)
            parts += [records(metric, v, **cols, **common) for metric, v in
                      (("dla_mean", values.mean(0)), ("dla_lo", lo), ("dla_hi", hi))]
        parts.append(records("logit_diff", self.logit_diff, segment=self.task,
                             prompt_id=pa.array(self.prompt_ids)))
        return concat(parts)


def _modules(model):
    bridge = model.bridge
    norm = getattr(bridge.ln_final, "original_component", bridge.ln_final)
    unembed = getattr(bridge.unembed, "original_component", bridge.unembed)
    return norm, unembed


def _norm_form(norm, x: Tensor) -> tuple[str, Tensor, Tensor | None, Tensor]:
    """``(form, effective weight [d], bias [d] or None, scale [batch, 1])`` of the final norm at
    ``x`` ``[batch, d]``: the candidate whose output equals the module's own.

    Raises:
        WorkbenchError: no candidate reproduces the module (an unsupported final norm).
    """
    xf = x.double()
    eps = float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))
    weight = getattr(norm, "weight", None)
    w = torch.ones(x.shape[-1], dtype=torch.float64, device=x.device) if weight is None \
        else weight.detach().double()
    bias = getattr(norm, "bias", None)
    b = None if bias is None else bias.detach().double()
    with torch.no_grad():
        want = norm(x).double()
    rms = torch.sqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    std = torch.sqrt(xf.var(-1, unbiased=False, keepdim=True) + eps)
    centred = xf - xf.mean(-1, keepdim=True)
    candidates = [("rms", w, None, rms, xf), ("rms_one_plus", 1 + w, None, rms, xf),
                  ("layer", w, b, std, centred)]
    tol = 1e-4 if x.dtype == torch.float32 else 2e-2
    scale = float(want.abs().max().clamp_min(1e-12))
    for form, weight_eff, b_eff, s, px in candidates:
        got = weight_eff * px / s + (0 if b_eff is None else b_eff)
        if float((got - want).abs().max()) <= tol * scale:
            return form, weight_eff, b_eff, s
    raise WorkbenchError(f"the final norm ({norm.__class__.__name__}) is none of RMSNorm, "
                         "RMSNorm(1 + w) or LayerNorm; direct logit attribution is not supported")


def direct_logit_attribution(model, task: Task, *, batch_size: int = 16,
                             fwd_hooks: Callable[[TaskBatch], HookList] | None = None
                             ) -> DirectLogitAttribution:
    """DLA of every head, MLP and the embedding to each clean prompt's logit difference.

    ``fwd_hooks(task_batch)`` (optional) gives bridge forward hooks active during that batch's
    forward (e.g. heads knocked out, :func:`circuits.ioi_evidence.direct_effects`); the
    decomposition is then of the hooked run's logit difference.

    Returns:
        :class:`DirectLogitAttribution` (logits), summing per prompt to the model's LD.

    Raises:
        WorkbenchError: the final norm is not one the workbench can linearise, or the components
            do not sum to the model's logit difference (e.g. a logit soft-cap, or a block that
            writes to the residual stream outside attention and MLP).
    """
    n_layers, n_heads = model.info.n_layers, model.info.n_heads
    n = len(task)
    out = {k: np.zeros(shape) for k, shape in (
        ("heads", (n, n_layers, n_heads)), ("mlps", (n, n_layers)), ("attn_bias", (n, n_layers)),
        ("embed", (n,)), ("constant", (n,)), ("logit_diff", (n,)))}
    norm, unembed = _modules(model)
    form = "rms"
    for tb in task.batches(batch_size):
        batch = tb.clean.to(model.device)
        last = batch.last_pos().to(model.device)
        rows = torch.arange(batch.size, device=model.device)
        got: dict[str, Tensor] = {}

        def keep(name: str):
            def hook(x, hook):
                got[name] = x[rows, last].detach().double()
            return hook
        names = ["blocks.0.hook_resid_pre", "ln_final.hook_in"] + [
            f"blocks.{layer}.{h}" for layer in range(n_layers)
            for h in ("attn.hook_result", "hook_attn_out", "hook_mlp_out")]
        extra = list(fwd_hooks(tb)) if fwd_hooks is not None else []
        with torch.inference_mode(), attn_result(model, True):
            logits = run_logits(model, batch, extra + [(name, keep(name)) for name in names])
        ld = logit_diff(last_token_logits(logits, batch.last_pos()), tb.answer, tb.distractor)
        final = got["ln_final.hook_in"]
        with torch.inference_mode():
            form, w, b, s = _norm_form(norm, final.to(logits.dtype))
        w_u = unembed.weight.detach().double()
        u = w_u[tb.answer.to(w_u.device)] - w_u[tb.distractor.to(w_u.device)]  # [batch, d]
        direction = u * w / s  # [batch, d]: DLA of x is direction . P(x)

        def dla(x: Tensor) -> Tensor:  # [batch, ..., d] -> [batch, ...]
            if form == "layer":
                x = x - x.mean(-1, keepdim=True)
            shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)
            return (x * direction.view(shape)).sum(-1)
        constant = torch.zeros(batch.size, dtype=torch.float64, device=model.device)
        if b is not None:
            constant = constant + (u * b).sum(-1)
        if getattr(unembed, "bias", None) is not None:
            b_u = unembed.bias.detach().double()
            constant = constant + b_u[tb.answer.to(b_u.device)] - b_u[tb.distractor.to(b_u.device)]
        heads = torch.stack([got[f"blocks.{layer}.attn.hook_result"]
                             for layer in range(n_layers)], 1)  # [batch, layer, head, d]
        attn = torch.stack([got[f"blocks.{layer}.hook_attn_out"] for layer in range(n_layers)], 1)
        mlps = torch.stack([got[f"blocks.{layer}.hook_mlp_out"] for layer in range(n_layers)], 1)
        parts = dict(heads=dla(heads), mlps=dla(mlps), attn_bias=dla(attn - heads.sum(2)),
                     embed=dla(got["blocks.0.hook_resid_pre"]), constant=constant,
                     logit_diff=ld.double())
        for key, value in parts.items():
            out[key][tb.index] = value.cpu().numpy()
    result = DirectLogitAttribution(task.name, out["heads"], out["mlps"], out["attn_bias"],
                                    out["embed"], out["constant"], out["logit_diff"],
                                    task.prompt_ids, form)
    _check_closure(model, result)
    return result


def _check_closure(model, result: DirectLogitAttribution) -> None:
    error = float(np.abs(result.total() - result.logit_diff).max())
    tol = CLOSURE_TOLERANCE if model.info.dtype == "float32" else 5e-2
    if error > tol:
        raise WorkbenchError(
            f"model {model.info.name!r} ({model.info.architecture}): the direct contributions sum "
            f"to a logit difference {error:.2e} away from the model's; direct logit attribution "
            "is not supported for this architecture")
