"""Edge attribution patching: EAP (Syed et al. 2023, arXiv 2310.10348) and EAP-IG (Hanna et al.
2024, arXiv 2403.17806).

For an edge ``u -> v`` with ``x_u`` the sender's output on the clean prompt and ``x'_u`` its ablated
output (by default its output on the corrupted prompt), summed over positions and ``d_model``:

* EAP:    ``score(u -> v) = (x'_u - x_u) . dm/d(input of v)``, the gradient at the clean run;
* EAP-IG: ``score(u -> v) = (x'_u - x_u) . (1/m) sum_k dm/d(input of v)`` at the run whose
  input embedding is ``e' + (k/m)(e - e')`` (``e`` clean, ``e'`` ablated embedding; ``m =
  ig_steps``, 5 in the paper). The straight path is in the *input embeddings* (Hanna et al.'s
  "EAP-IG-inputs"). ``ig_rule="right"`` (the default) sums ``k = 1..m``: the right Riemann sum,
  whose last point is the clean run (which also gives ``x_u``); ``ig_rule="left"`` sums ``k =
  0..m-1``, the left Riemann sum that starts at the ablated input and never evaluates the clean
  run, as the released EAP-IG code does (``get_scores_eap_ig``: ``for step in range(0, steps)``
  with ``k / steps``; github.com/hannamw/EAP-IG, ``src/eap/attribute.py``). It costs one extra
  forward (no backward) for the clean outputs. Both converge to the path integral as ``m``
  grows; their difference at ``m`` steps is ``(x'_u - x_u) . (grad(1) - grad(0)) / m``.

Sign: a score is the first-order estimate of ``m(clean with the edge ablated) - m(clean)`` (the
noising direction): with the logit difference, a negative score means the edge carries the task.
Circuits rank edges by ``|score|``. The scores are exact for a metric linear in the receiver
inputs (tests: a hand-built linear model, where EAP equals edge patching).

Cost per batch: EAP one ablated forward (no gradients) + one forward and backward; EAP-IG one
ablated forward + ``m`` forwards and backwards; then one batched product of every sender's output
difference with every receiver's gradient. The gradients at the receiver inputs come from ordinary
forwards and backwards (:meth:`circuits.edges.forward.GraphModel.receiver_gradients`: per-head
gradients mapped through the shared input norm's Jacobian), never from the parameters.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from circuits.edges.ablation import AblationSource, check_ablation, check_metric, metric_values
from circuits.edges.forward import GraphModel
from circuits.edges.graph import EdgeGraph
from workbench.bounds import BOUNDS
from workbench.errors import InputError

EDGE_METHODS = ("eap", "eap-ig")
IG_RULES = ("right", "left")
# Memory grows with the steps (per layer one [batch, pos, d_model] input per step, see
# GraphModel.receiver_gradients): 64 steps of 16 IOI prompts on SmolLM2 hold about 1.4 GB.
MAX_IG_STEPS = int(BOUNDS["circuits --ig-steps"].high)  # the one bounds table's


def check_method(method: str, metric: str, ig_steps: int, ig_rule: str = "right") -> None:
    """Raise :class:`InputError` for an unknown method, metric or Riemann rule, a step count
    outside ``1 .. MAX_IG_STEPS``, or EAP with KL."""
    if method not in EDGE_METHODS:
        raise InputError(f"--method {method!r} is not an edge method; choose from "
                         f"{', '.join(EDGE_METHODS)}")
    check_metric(metric)
    BOUNDS["circuits --ig-steps"].check(ig_steps, "--ig-steps")
    if ig_rule not in IG_RULES:
        raise InputError(f"--ig-rule {str(ig_rule)[:40]!r} is not one of {', '.join(IG_RULES)}")
    if method == "eap" and metric == "kl":
        raise InputError("--metric kl has zero gradient at the clean run, so --method eap scores "
                         "every edge 0; use --method eap-ig")


@dataclass
class EdgeScores:
    """One method's edge scores on one task.

    Attributes:
        per_prompt: ``[n_prompts, n_edges]`` score of every edge per prompt, in the metric's unit
            (edge order of :attr:`EdgeGraph.edges`); see the module docstring for the sign.
        clean: ``[n_prompts]`` metric on the clean prompts.
    """

    method: str
    task: str
    metric: str
    ablation: str
    ig_steps: int
    graph: EdgeGraph
    per_prompt: np.ndarray
    clean: np.ndarray
    prompt_ids: list[str]
    seconds: float = 0.0
    ig_rule: str = "right"

    @property
    def scores(self) -> np.ndarray:
        """``[n_edges]`` mean score over prompts."""
        return self.per_prompt.mean(0)

    def head_scores(self) -> np.ndarray:
        """``[n_layers, n_heads]`` node score of each head: the sum of its outgoing edges' mean
        scores (= node-level attribution patching of the head's output, for EAP)."""
        return self.graph.head_matrix(self.scores)


def ig_alphas(method: str, ig_steps: int, ig_rule: str = "right") -> list[float]:
    """The interpolation points ``k / m`` of the gradients averaged (EAP: ``[1.0]``, the clean
    run). Right rule: ``k = m, m-1, .., 1`` (the clean run first); left: ``k = 0 .. m-1``."""
    if method == "eap":
        return [1.0]
    if ig_rule == "left":
        return [k / ig_steps for k in range(ig_steps)]
    return [k / ig_steps for k in range(ig_steps, 0, -1)]


def _batch_scores(gm: GraphModel, tb, ablated: torch.Tensor, method: str, metric: str,
                  ig_steps: int, ig_rule: str = "right") -> tuple[np.ndarray, np.ndarray]:
    """``([batch, n_edges]`` scores, ``[batch]`` clean metric) of one task batch."""
    g = gm.graph
    last = tb.clean.last_pos().to(gm.device)
    clean_embed = gm.embed(tb.clean.input_ids).to(ablated.dtype)
    base = ablated[:, 0]
    alphas = ig_alphas(method, ig_steps, ig_rule)
    clean_lp, clean = None, None
    if alphas[0] != 1.0:  # left rule: the clean run is not a step; one forward gives it
        with torch.no_grad():
            clean = gm.run(clean_embed, last)
        clean_lp = torch.log_softmax(clean.logits.double(), -1)

    def values(logits: torch.Tensor) -> torch.Tensor:
        nonlocal clean_lp
        if clean_lp is None:  # right rule: the first step is the clean run (alpha = 1)
            clean_lp = torch.log_softmax(logits.detach().double(), -1)
        return metric_values(metric, logits, tb.answer, tb.distractor, clean_lp)

    steps = ((clean_embed if alpha == 1.0 else base + alpha * (clean_embed - base)).detach()
             for alpha in alphas)  # lazily, one at a time
    run = gm.receiver_gradients(steps, last, values, outputs=clean is None)
    grads = run.grads
    if clean is None:
        clean_outs, clean_metric = run.outs, run.values.double().cpu().numpy()
    else:
        clean_outs = clean.outs
        clean_metric = metric_values(metric, clean.logits, tb.answer, tb.distractor,
                                     clean_lp).double().cpu().numpy()
    # every (sender, receiver) pair in one batched product (about twice the edges' work, but one
    # pass over each operand); padding: outputs there are finite and their gradients exactly 0
    diff = torch.sub(ablated, clean_outs, out=clean_outs)  # [batch, n_senders, pos, d_model]
    b, _, p, d = diff.shape
    dense = torch.bmm(diff.view(b, g.n_senders, p * d),
                      grads.view(b, g.n_receivers, p * d).transpose(1, 2))
    s, r = g.edges
    return dense[:, s, r].double().cpu().numpy(), clean_metric


def edge_scores(model, task, *, method: str = "eap-ig", metric: str = "logit_diff",
                ablation: str = "corrupted", ig_steps: int = 5, ig_rule: str = "right",
                batch_size: int = 16,
                graph_model: GraphModel | None = None,
                progress: Callable[[int], None] | None = None) -> EdgeScores:
    """EAP or EAP-IG scores of every edge of ``model`` on ``task``.

    Args:
        method: ``eap`` or ``eap-ig``.
        metric: ``logit_diff``, ``prob`` or ``kl`` (:mod:`circuits.edges.ablation`).
        ablation: ``corrupted``, ``mean``, ``resample`` or ``zero``.
        ig_steps: EAP-IG's ``m`` (ignored by EAP), 1 to :data:`MAX_IG_STEPS`.
        ig_rule: ``right`` (``k = 1..m``) or ``left`` (``k = 0..m-1``, the released EAP-IG
            code's); see the module docstring.
        progress: called with the number of prompts just scored.

    Raises:
        InputError: a bad method, metric, ablation or step count (before any forward pass); a
            model that is not Llama-family.
    """
    check_method(method, metric, ig_steps, ig_rule)
    check_ablation(ablation)
    start = time.perf_counter()
    gm = graph_model or GraphModel(model)
    source = AblationSource(gm, task, ablation, batch_size)
    per_prompt = np.zeros((len(task), gm.graph.n_edges))
    clean = np.zeros(len(task))
    for tb in task.batches(batch_size):
        scores, clean_metric = _batch_scores(gm, tb, source.batch(tb), method, metric, ig_steps,
                                             ig_rule)
        per_prompt[tb.index], clean[tb.index] = scores, clean_metric
        if progress:
            progress(len(tb.index))
    return EdgeScores(method, task.name, metric, ablation, ig_steps if method == "eap-ig" else 1,
                      gm.graph, per_prompt, clean, task.prompt_ids, time.perf_counter() - start,
                      ig_rule if method == "eap-ig" else "right")
