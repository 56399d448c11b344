"""IOI head classes (Wang et al. 2022, arXiv 2211.00593, section 3): name movers, negative name
movers, S-inhibition, induction, duplicate-token, previous-token and backup name-mover heads, each
found by the paper's path-patching chain and checked against its attention and copying criteria.

The chain (noising: the clean prompt, a sender's ``z`` from the p_ABC corrupted prompt at every
position; :mod:`circuits.path_patching`; scores are fractions of the clean - corrupted gap, positive
= the sender carries the task):

1. senders -> logits: **name movers** (score >= ``min_path``, 95% interval above 0, attend END->IO
   more than END->S1+S2, copy score >= ``min_copy``) and **negative name movers** (score <=
   -``min_path``, interval below 0, END->IO > END->S, negative copy score >= ``min_copy``);
2. senders -> the name movers' queries: **S-inhibition** heads (score >= ``min_path``, interval
   above 0, END->S2 >= ``min_attention`` and above END->IO);
3. senders -> the S-inhibition heads' keys and values: **induction** heads (S2->S1+1 >=
   ``min_attention`` and above S2->S1) and **duplicate-token** heads (S2->S1 >= ``min_attention``
   and above S2->S1+1), both with score >= ``min_path`` and the interval above 0;
4. senders -> the induction heads' keys: **previous-token** heads (score >= ``min_path``, interval
   above 0, S1+1->S1 >= ``min_attention``);
5. **backup name movers**: heads that are no name mover whose direct logit attribution at END
   rises by at least ``min_backup`` logits (mean over prompts, 95% interval above 0) when the name
   movers' ``z`` is replaced by their p_ABC ``z``, and that attend END->IO more than END->S.

Cost: each stage first estimates every sender's path effect at once (a linearisation,
:func:`circuits.ioi_evidence.path_estimates`: a forward and a backward per batch), then
path-patches exactly only the ``n_candidates`` senders with the largest estimated ``|effect|``;
classes are decided on the exact values only. Grouped-query attention: a receiver's keys/values are
those of its key/value head, which the other query heads of its group read too; the k/v stages
patch that shared head, so an effect "into the keys of h" is an effect into h's group (the table's
``condition`` names the receivers; the docs say how it is read).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from circuits.effects import HeadEffects
from circuits.ioi_evidence import (ATTENTION, attention_scores, copy_scores, direct_effects,
                                   ioi_positions, name_residuals, path_estimates)
from circuits.path_patching import path_patching
from circuits.tasks import Task
from workbench.errors import InputError
from workbench.heads import Head, format_head
from workbench.records import concat, records
from workbench.stats import bootstrap_mean_ci

CLASSES = ("name_mover", "negative_name_mover", "s_inhibition", "induction", "duplicate_token",
           "previous_token", "backup_name_mover")
PROBE = "ioi_classes"
UNITS = {
    "ioi_class": "1 per head of the class named in condition",
    "ioi_path_score": "path patching, fraction of the clean - corrupted LD gap lost when the "
                      "sender is noised (positive = carries the task); condition = stage",
    "ioi_path_score_lo": "2.5th bootstrap percentile of ioi_path_score (prompts resampled)",
    "ioi_path_score_hi": "97.5th bootstrap percentile of ioi_path_score",
    "ioi_path_estimate": "first-order estimate of ioi_path_score (picks the senders measured)",
    "ioi_attention": "attention probability, mean over prompts; condition = query->key",
    "ioi_copy_score": "fraction of (prompt, name) pairs whose name is in the top-5 logits of OV",
    "ioi_negative_copy_score": "fraction of (prompt, name) pairs whose name is in the bottom-5",
    "ioi_dla": "direct logit attribution at END, logits (mean over prompts)",
    "ioi_dla_ablated": "direct logit attribution with the name movers knocked out (p_ABC z)",
    "ioi_backup_delta": "ioi_dla_ablated - ioi_dla, logits",
    "ioi_backup_delta_lo": "2.5th bootstrap percentile of ioi_backup_delta",
    "ioi_backup_delta_hi": "97.5th bootstrap percentile of ioi_backup_delta",
}
STAGES = {"name_mover": ("logits", ""), "s_inhibition": ("name_mover", "q"),
          "induction": ("s_inhibition", "kv"), "previous_token": ("induction", "k")}
# stage name -> (receiver class, receiver input); the stage "name_mover" also finds negative ones


@dataclass(frozen=True)
class IOICriteria:
    """The numeric cut-offs of the classes (Wang et al.'s criteria are qualitative; these are ours,
    stated in docs/circuits.md).

    Attributes:
        n_candidates: senders path-patched exactly per stage (the largest estimated |effect|).
        min_path: |path-patching score| a class needs (fraction of the clean - corrupted gap).
        min_attention: attention probability a class's pattern needs (mean over prompts).
        min_copy: copy score (or negative copy score) a (negative) name mover needs.
        min_backup: rise of the direct logit attribution (logits) a backup name mover needs.
        top_k: the copy score's top-k.
    """

    n_candidates: int = 12
    min_path: float = 0.02
    min_attention: float = 0.1
    min_copy: float = 0.5
    min_backup: float = 0.05
    top_k: int = 5

    def __post_init__(self) -> None:
        for name, value, low, high in (("n_candidates", self.n_candidates, 1, 1000),
                                       ("top_k", self.top_k, 1, 1000)):
            if not low <= value <= high:
                raise InputError(f"IOI classes: {name} must be in [{low}, {high}], got {value}")
        for name in ("min_path", "min_attention", "min_copy", "min_backup"):
            value = getattr(self, name)
            if not np.isfinite(value) or not 0 <= value <= 1:
                raise InputError(f"IOI classes: {name} must be a number in [0, 1], got {value}")


@dataclass
class Stage:
    """One path-patching stage: every sender's estimate, the exact effects of the candidates."""

    name: str
    receivers: list[Head] | str
    kinds: str
    estimate: np.ndarray  # [n_layers, n_heads] estimated score (NaN: cannot reach a receiver)
    effects: HeadEffects | None  # exact path patching of the candidates (None: no receivers)
    candidates: list[Head] = field(default_factory=list)

    @property
    def condition(self) -> str:
        target = "logits" if self.receivers == "logits" else \
            f"{self.kinds} of {','.join(format_head(h) for h in self.receivers)}"
        return f"stage={self.name}; receivers={target}"


@dataclass
class IOIClasses:
    """The classes of one IOI task and every number they were decided on.

    Attributes:
        classes: ``{head: class}`` (one class per head, the first that holds in :data:`CLASSES`).
        stages: the four path-patching stages (a stage without receivers has ``effects`` None).
        attention: ``{name: [n_layers, n_heads]}`` mean attention (:data:`ATTENTION`).
        copy: ``{head: (copy score, negative copy score)}`` of the heads measured.
        dla, dla_ablated: ``[n_prompts, n_layers, n_heads]`` direct effects (logits).
        criteria: the cut-offs; seconds: wall time.
    """

    task: str
    classes: dict[Head, str]
    stages: dict[str, Stage]
    attention: dict[str, np.ndarray]
    copy: dict[Head, tuple[float, float]]
    dla: np.ndarray
    dla_ablated: np.ndarray
    criteria: IOICriteria
    seconds: float = 0.0

    def heads(self, name: str) -> list[Head]:
        return sorted(h for h, c in self.classes.items() if c == name)

    def path_score(self, stage: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(score, lo, hi)`` ``[n_layers, n_heads]`` of a stage's exact path patching (NaN for
        heads not measured)."""
        effects = self.stages[stage].effects
        shape = self.dla.shape[1:]
        if effects is None:
            nan = np.full(shape, np.nan)
            return nan, nan.copy(), nan.copy()
        lo, hi = effects.score_intervals()
        return effects.score, lo, hi

    def backup_delta(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(mean, lo, hi)`` ``[n_layers, n_heads]`` rise of each head's direct effect when the
        name movers are knocked out (logits; 95% bootstrap interval over prompts)."""
        delta = self.dla_ablated - self.dla
        n = delta.shape[0]
        lo, hi = bootstrap_mean_ci(delta.reshape(n, -1))
        return delta.mean(0), lo.reshape(delta.shape[1:]), hi.reshape(delta.shape[1:])

    def records(self) -> pa.Table:
        """The ``ioi_classes`` table (record schema, ``segment`` = task; :data:`UNITS`)."""
        common = dict(segment=self.task)
        parts = []
        for name in CLASSES:
            heads = self.heads(name)
            if heads:
                parts.append(records("ioi_class", np.ones(len(heads)),
                                     layer=[h[0] for h in heads], head=[h[1] for h in heads],
                                     condition=name, **common))
        for stage in self.stages.values():
            est = stage.estimate
            layer, head = np.nonzero(np.isfinite(est))
            parts.append(records("ioi_path_estimate", est[layer, head], layer=layer, head=head,
                                 condition=stage.condition, **common))
            if stage.effects is None:
                continue
            score, lo, hi = self.path_score(stage.name)
            layer, head = np.nonzero(np.isfinite(score))
            for metric, values in (("ioi_path_score", score), ("ioi_path_score_lo", lo),
                                   ("ioi_path_score_hi", hi)):
                parts.append(records(metric, values[layer, head], layer=layer, head=head,
                                     condition=stage.condition, **common))
        n_layers, n_heads = self.dla.shape[1:]
        layer, head = np.divmod(np.arange(n_layers * n_heads), n_heads)
        for name, values in self.attention.items():
            parts.append(records("ioi_attention", values[layer, head], layer=layer, head=head,
                                 condition=name, **common))
        if self.copy:
            heads = sorted(self.copy)
            for j, metric in enumerate(("ioi_copy_score", "ioi_negative_copy_score")):
                parts.append(records(metric, [self.copy[h][j] for h in heads],
                                     layer=[h[0] for h in heads], head=[h[1] for h in heads],
                                     condition=f"top_k={self.criteria.top_k}", **common))
        mean, lo, hi = self.backup_delta()
        knocked = ",".join(format_head(h) for h in self.heads("name_mover")) or "none"
        for metric, values, cond in (
                ("ioi_dla", self.dla.mean(0), None),
                ("ioi_dla_ablated", self.dla_ablated.mean(0), f"ablated={knocked}"),
                ("ioi_backup_delta", mean, f"ablated={knocked}"),
                ("ioi_backup_delta_lo", lo, f"ablated={knocked}"),
                ("ioi_backup_delta_hi", hi, f"ablated={knocked}")):
            parts.append(records(metric, values[layer, head], layer=layer, head=head,
                                 condition=cond, **common))
        return concat(parts)


def _candidates(estimate: np.ndarray, n: int, sign: int = 0) -> list[Head]:
    """The ``n`` heads with the largest |estimate| (or largest ``sign * estimate``)."""
    score = np.abs(estimate) if sign == 0 else sign * estimate
    score = np.where(np.isfinite(score), score, -np.inf)
    order = np.argsort(-score, axis=None, kind="stable")[:n]
    heads = [tuple(int(v) for v in np.unravel_index(i, estimate.shape)) for i in order]
    return sorted(h for h in heads if np.isfinite(score[h]))


def _stage(model, task: Task, name: str, receivers, kinds: str, criteria: IOICriteria,
           batch_size: int, sign: int = 0) -> Stage:
    n_layers, n_heads = model.info.n_layers, model.info.n_heads
    reach = n_layers if receivers == "logits" else max((l for l, _ in receivers), default=0)
    if reach == 0:  # no receivers, or all in layer 0: no sender can reach them
        return Stage(name, list(receivers), kinds, np.full((n_layers, n_heads), np.nan), None)
    est = path_estimates(model, task, receivers, kinds or "qkv", batch_size=batch_size)
    est_mean = est.mean(0)
    est_mean[reach:] = np.nan
    senders = _candidates(est_mean, criteria.n_candidates, sign)
    effects = path_patching(model, task, receivers=receivers, receiver_input=kinds or "qkv",
                            senders=senders, batch_size=batch_size)
    gap = effects.clean.mean() - effects.corrupted.mean()
    return Stage(name, receivers, kinds, -est_mean / gap, effects, senders)


def classify(path: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
             attention: dict[str, np.ndarray], copy: dict[Head, tuple[float, float]],
             backup: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
             criteria: IOICriteria, stage: str | None = None) -> dict[Head, str]:
    """The class of each head from its evidence (the rules of the module docstring).

    Args:
        path: ``{stage: (score, lo, hi)}`` ``[n_layers, n_heads]`` exact path-patching scores
            (NaN = not measured) for the stages of :data:`STAGES` present.
        attention: ``{name: [n_layers, n_heads]}`` mean attention (:data:`ATTENTION`).
        copy: ``{head: (copy, negative copy)}``.
        backup: ``(mean, lo, hi)`` rise of the direct effects with the name movers knocked out,
            or None (not measured yet).
        stage: decide only the classes of this stage (and earlier ones); None = all.

    Returns:
        ``{head: class}``, the first class of :data:`CLASSES` whose rule holds.
    """
    a = attention
    io_over_s = a["END->IO"] > a["END->S"]
    out: dict[Head, str] = {}

    def add(mask: np.ndarray, name: str) -> None:
        for layer, head in zip(*np.nonzero(mask)):
            out.setdefault((int(layer), int(head)), name)

    def copied(j: int) -> np.ndarray:
        got = np.zeros(io_over_s.shape, dtype=bool)
        for h, values in copy.items():
            got[h] = values[j] >= criteria.min_copy
        return got

    def positive(name: str) -> np.ndarray:
        """Score >= min_path with the 95% interval above 0 (NaN: not measured)."""
        score, lo, _ = (np.nan_to_num(v) for v in path[name])
        return (score >= criteria.min_path) & (lo > 0)

    order = list(STAGES)
    last = order.index(stage) if stage else len(order) - 1
    if "name_mover" in path:
        score, _, hi = (np.nan_to_num(v) for v in path["name_mover"])
        add(positive("name_mover") & io_over_s & copied(0), "name_mover")
        add((score <= -criteria.min_path) & (hi < 0) & io_over_s & copied(1),
            "negative_name_mover")
    if last >= 1 and "s_inhibition" in path:
        add(positive("s_inhibition") & (a["END->S2"] >= criteria.min_attention)
            & (a["END->S2"] > a["END->IO"]), "s_inhibition")
    if last >= 2 and "induction" in path:
        ok = positive("induction")
        add(ok & (a["S2->S1+1"] >= criteria.min_attention) & (a["S2->S1+1"] > a["S2->S1"]),
            "induction")
        add(ok & (a["S2->S1"] >= criteria.min_attention) & (a["S2->S1"] > a["S2->S1+1"]),
            "duplicate_token")
    if last >= 3 and "previous_token" in path:
        add(positive("previous_token") & (a["S1+1->S1"] >= criteria.min_attention),
            "previous_token")
    if stage is None and backup is not None:
        mean, lo, _ = backup
        add((mean >= criteria.min_backup) & (lo > 0) & io_over_s, "backup_name_mover")
    return out


def ioi_classes(model, task: Task, criteria: IOICriteria | None = None, *, batch_size: int = 16,
                progress: Callable[[str], None] | None = None) -> IOIClasses:
    """Find the IOI head classes of ``task`` on ``model`` (module docstring).

    Returns:
        :class:`IOIClasses`.

    Raises:
        InputError: the task lacks the IOI positions (segments IO, S1, S2), before any forward.
        WorkbenchError: an architecture the copy score or path patching cannot read.
    """
    criteria = criteria or IOICriteria()
    start = time.perf_counter()
    positions = ioi_positions(task)
    say = progress or (lambda _: None)
    say("attention")
    attention = {k: v.mean(0) for k, v in attention_scores(model, task, positions,
                                                         batch_size=batch_size).items()}
    resid, tokens = name_residuals(model, task, positions, batch_size=batch_size)
    stages: dict[str, Stage] = {}
    path: dict = {}
    copy: dict[Head, tuple[float, float]] = {}
    classes: dict[Head, str] = {}
    for name, (receiver_class, kinds) in STAGES.items():
        say(name)
        receivers = "logits" if receiver_class == "logits" else \
            sorted(h for h, c in classes.items() if c == receiver_class)
        stages[name] = _stage(model, task, name, receivers, kinds, criteria, batch_size)
        if stages[name].effects is None:
            continue
        path[name] = (stages[name].effects.score,) + stages[name].effects.score_intervals()
        if name == "name_mover":
            copy.update(copy_scores(model, stages[name].candidates, resid, tokens,
                                    k=criteria.top_k))
        classes = classify(path, attention, copy, None, criteria, stage=name)
    say("backup")
    dla = direct_effects(model, task, batch_size=batch_size)
    movers = sorted(h for h, c in classes.items() if c == "name_mover")
    ablated = direct_effects(model, task, ablate=movers, batch_size=batch_size) if movers \
        else dla.copy()
    result = IOIClasses(task.name, {}, stages, attention, copy, dla, ablated, criteria)
    backup = result.backup_delta()
    extra = [h for h in _candidates(backup[0], criteria.n_candidates, sign=1) if h not in copy]
    copy.update(copy_scores(model, extra, resid, tokens, k=criteria.top_k))
    result.classes = classify(path, attention, copy, backup, criteria)
    result.seconds = time.perf_counter() - start
    return result


def criterion_text(name: str, criteria: IOICriteria) -> str:
    """One line stating the rule of class ``name`` with its cut-offs (the atlas and docs)."""
    c = criteria
    path = "interval excluding 0 (95% bootstrap over prompts)"
    return {
        "name_mover": f"path patching to the logits >= {c.min_path:g} of the gap, {path}; "
                      f"attention END->IO > END->S1+S2; OV copy score >= {c.min_copy:g} "
                      f"(name in the top {c.top_k})",
        "negative_name_mover": f"path patching to the logits <= -{c.min_path:g} of the gap, "
                               f"{path}; attention END->IO > END->S1+S2; negative copy score "
                               f">= {c.min_copy:g} (name in the bottom {c.top_k})",
        "s_inhibition": f"path patching to the name movers' queries >= {c.min_path:g} of the "
                        f"gap, {path}; attention END->S2 >= {c.min_attention:g} and > END->IO",
        "induction": f"path patching to the S-inhibition heads' keys and values >= "
                     f"{c.min_path:g} of the gap, {path}; attention S2->S1+1 >= "
                     f"{c.min_attention:g} and > S2->S1",
        "duplicate_token": f"path patching to the S-inhibition heads' keys and values >= "
                           f"{c.min_path:g} of the gap, {path}; attention S2->S1 >= "
                           f"{c.min_attention:g} and > S2->S1+1",
        "previous_token": f"path patching to the induction heads' keys >= {c.min_path:g} of the "
                          f"gap, {path}; attention S1+1->S1 >= {c.min_attention:g}",
        "backup_name_mover": f"not a name mover; direct logit attribution rises by >= "
                             f"{c.min_backup:g} logits, {path}, when the name movers' z is "
                             "replaced by the p_ABC one; attention END->IO > END->S1+S2",
    }[name]


__all__ = ["ATTENTION", "CLASSES", "IOIClasses", "IOICriteria", "classify", "criterion_text",
           "ioi_classes"]
