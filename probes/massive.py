"""Massive activations in the residual stream (Sun et al. 2024, arXiv 2402.17762; METHODS.md
section 2).

An entry ``x`` of the hidden state entering layer ``l`` (``resid_pre[l]``, Hugging Face
``hidden_states[l]``) is *massive* when ``|x| > abs_threshold`` (100) AND
``|x| >= median_ratio * median|x|`` (1000; "about 1,000 times larger than the median", not 100x),
the median taken over that prompt's hidden state at that layer (every real token, every dimension).
They
sit in a few fixed dimensions, usually at the first token and at the first delimiter. The dimensions
are discovered from the data (:func:`sink_dims_from_records`), never hard-coded per model.

Token positions of residual-stream entries are written to ``key_pos``: these are the tokens that
later receive attention (the sinks), so the records join the attention-sink probe's on ``key_pos``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import torch
from jaxtyping import Float, Int
from torch import Tensor

from probes.base import Probe, rule
from workbench.errors import InputError
from workbench.records import concat, records, string_column


@dataclass(frozen=True)
class ResidStats:
    """Statistics of a batch's hidden state at one layer (numpy, on the CPU).

    ``median_abs`` ``[batch]``: the lower median of ``|x|`` over each prompt's real tokens and all
    dimensions (``torch.median`` semantics, as Sun et al.'s code); ``top_*`` ``[batch, k]``: the
    ``k`` largest ``|x|`` of each prompt (descending) with token position and dimension;
    ``massive_*`` (1-D, one entry per massive activation): batch index, position, dimension and the
    signed value.
    """

    median_abs: np.ndarray
    top_pos: np.ndarray
    top_dim: np.ndarray
    top_abs: np.ndarray
    massive_b: np.ndarray
    massive_pos: np.ndarray
    massive_dim: np.ndarray
    massive_value: np.ndarray


def resid_stats(resid: Float[Tensor, "batch pos d_model"], lengths: Int[Tensor, " batch"], *,
                top_k: int = 5, abs_threshold: float = 100.0, median_ratio: float = 1000.0
                ) -> ResidStats:
    """Top magnitudes, median magnitude and massive entries of each prompt's hidden state.

    Positions at or beyond ``lengths[b]`` (right padding) never count. Computed in fp32. An entry
    is massive when ``|x| > abs_threshold`` and ``|x| >= median_ratio * median|x|``.
    Source: Sun et al. 2024, arXiv 2402.17762, Sec. 2 (criterion) and their ``main_llm.py``
    (top-3 and median of ``|x|`` per layer and sequence).
    """
    a = resid.float().abs()
    n_batch, n_pos, d_model = a.shape
    valid = torch.arange(n_pos, device=a.device)[None, :] < lengths.to(a.device)[:, None]
    median = torch.stack([torch.kthvalue(a[b, :n].flatten(), (n * d_model - 1) // 2 + 1).values
                          for b, n in enumerate(lengths.tolist())])
    k = min(top_k, int(lengths.min()) * d_model)
    padded = bool((lengths < n_pos).any())
    top = (a.masked_fill(~valid[..., None], -1.0) if padded else a).flatten(1).topk(k, dim=1)
    # few entries pass |x| > abs_threshold: test the other two conditions on those only
    bi, pos, dim = (a > abs_threshold).nonzero(as_tuple=True)
    keep = (a[bi, pos, dim] >= median_ratio * median[bi]) & valid[bi, pos]
    bi, pos, dim = bi[keep], pos[keep], dim[keep]
    np_ = lambda t: t.cpu().numpy()  # noqa: E731
    return ResidStats(np_(median.double()), np_(top.indices // d_model),
                      np_(top.indices % d_model), np_(top.values.double()), np_(bi), np_(pos),
                      np_(dim), np_(resid[bi, pos, dim].double()))


def sink_dims_from_records(table: pa.Table, min_prompt_frac: float = 0.5
                           ) -> list[tuple[int, float]]:
    """Sink dimensions found in a ``massive_activations`` table: every dimension that carries a
    massive activation (any layer, any token) in at least ``min_prompt_frac`` of the prompts.

    Returns ``[(dim, fraction of prompts)]``, most frequent first (ties by dimension).
    """
    per_prompt = table.filter(pc.and_(pc.equal(table["metric"], "median_abs"),
                                      pc.is_valid(table["prompt_id"])))
    n_prompts = len(pc.unique(per_prompt["prompt_id"]))
    massive = table.filter(pc.equal(table["metric"], "massive")).select(["dim", "prompt_id"])
    if n_prompts == 0 or massive.num_rows == 0:
        return []
    counts = massive.to_pandas().drop_duplicates().groupby("dim").size() / n_prompts
    counts = counts[counts >= min_prompt_frac]
    order = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [(int(d), float(f)) for d, f in order]


@dataclass
class _State:
    batch: Any
    stats: dict[int, ResidStats] = field(default_factory=dict)  # per layer


@dataclass(frozen=True)
class MassiveActivations(Probe):
    """Massive activations of the hidden state entering every layer (hook ``hook_resid_pre``).

    Records per (prompt, layer), ``head`` null, token position in ``key_pos``:

    * ``top_abs``: the ``top_k`` largest ``|x|`` with their ``key_pos`` and ``dim``;
    * ``median_abs``: the median ``|x|`` over the prompt's real tokens and all dimensions;
    * ``massive``: the signed value of every entry passing the criterion (``key_pos``, ``dim``);
    * ``first_massive_layer`` per (prompt, ``key_pos``): the first layer at which that token carries
      a massive activation (value = layer index), for every token that ever does.

    Summaries (``prompt_id`` null): ``sink_dim`` per discovered dimension (``dim`` set, value = the
    fraction of prompts in which it is massive; kept when >= ``min_prompt_frac``),
    ``sink_dim_first_layer`` (value = the first layer at which it is massive in any prompt),
    ``token0_massive_frac`` per layer (fraction of prompts whose token 0 is massive there),
    ``token0_massive_layer`` (value = the first layer where that fraction is >= 0.5; absent when
    token 0 never is), ``mean_max_abs`` and ``mean_median_abs`` per layer (Sun et al.'s Fig. 2).

    Raises (at construction): InputError for a non-positive ``top_k`` or threshold.
    """

    name: ClassVar[str] = "massive_activations"
    hook_points: ClassVar[tuple[str, ...]] = ("hook_resid_pre",)
    headline: ClassVar[tuple[str, ...]] = ("mean_max_abs", "token0_massive_frac")
    units: ClassVar[dict[str, str]] = {
        "top_abs": "|activation|", "median_abs": "|activation|", "massive": "activation",
        "first_massive_layer": "layer index", "sink_dim": "fraction of prompts",
        "sink_dim_first_layer": "layer index", "token0_massive_frac": "fraction of prompts",
        "token0_massive_layer": "layer index", "mean_max_abs": "|activation|",
        "mean_median_abs": "|activation|",
    }

    top_k: Annotated[int, rule(ge=1)] = 5  # largest |x| entries recorded per (prompt, layer)
    abs_threshold: Annotated[float, rule(ge=0)] = 100.0  # |x| must exceed this (Sun et al.)
    median_ratio: Annotated[float, rule(gt=0)] = 1000.0  # ... and be this many times the median
    # a sink dimension is massive in at least this share of prompts
    min_prompt_frac: Annotated[float, rule(gt=0, le=1)] = 0.5

    def start(self, batch: Any, model: Any) -> _State:
        return _State(batch)

    def observe(self, state: _State, layer: int, point: str, activation: Tensor) -> None:
        state.stats[layer] = resid_stats(
            activation, state.batch.lengths, top_k=self.top_k, abs_threshold=self.abs_threshold,
            median_ratio=self.median_ratio)

    def finish(self, state: _State) -> pa.Table | None:
        ids = state.batch.prompt_ids
        out = []
        for layer, s in sorted(state.stats.items()):
            n_batch, k = s.top_abs.shape
            out.append(records("median_abs", s.median_abs, layer=layer,
                               prompt_id=string_column(ids, np.arange(n_batch))))
            out.append(records("top_abs", s.top_abs.ravel(), layer=layer,
                               key_pos=s.top_pos.ravel(), dim=s.top_dim.ravel(),
                               prompt_id=string_column(ids, np.repeat(np.arange(n_batch), k))))
            out.append(records("massive", s.massive_value, layer=layer, key_pos=s.massive_pos,
                               dim=s.massive_dim, prompt_id=string_column(ids, s.massive_b)))
        out.append(self._first_layers(state, ids))
        return concat(out)

    def _first_layers(self, state: _State, ids: list[str]) -> pa.Table | None:
        first: dict[tuple[int, int], int] = {}
        for layer, s in sorted(state.stats.items()):
            for b, pos in zip(s.massive_b.tolist(), s.massive_pos.tolist()):
                first.setdefault((b, pos), layer)
        if not first:
            return None
        keys = sorted(first)
        b = np.array([k[0] for k in keys])
        return records("first_massive_layer", [first[k] for k in keys],
                       prompt_id=string_column(ids, b), key_pos=np.array([k[1] for k in keys]))

    def summarize(self, table: pa.Table) -> pa.Table | None:
        df = table.filter(pc.is_valid(table["prompt_id"])).select(
            ["metric", "layer", "prompt_id", "key_pos", "dim", "value"]).to_pandas()
        n_prompts = df.loc[df.metric == "median_abs", "prompt_id"].nunique()
        if n_prompts == 0:
            return None
        out = []
        massive = df[df.metric == "massive"]
        for dim, frac in sink_dims_from_records(table, self.min_prompt_frac):
            out.append(records("sink_dim", frac, dim=dim))
            first = int(massive.loc[massive.dim == dim, "layer"].min())
            out.append(records("sink_dim_first_layer", first, dim=dim))
        layers = np.sort(df.loc[df.metric == "median_abs", "layer"].unique())
        tok0 = massive[massive.key_pos == 0].groupby("layer").prompt_id.nunique()
        frac0 = tok0.reindex(layers, fill_value=0).to_numpy() / n_prompts
        out.append(records("token0_massive_frac", frac0, layer=layers, key_pos=0))
        if (frac0 >= 0.5).any():
            out.append(records("token0_massive_layer", int(layers[np.argmax(frac0 >= 0.5)]),
                               key_pos=0))
        top1 = df[df.metric == "top_abs"].groupby(["layer", "prompt_id"]).value.max()
        out.append(_layer_means("mean_max_abs", top1.groupby("layer").mean()))
        out.append(_layer_means("mean_median_abs",
                                df[df.metric == "median_abs"].groupby("layer").value.mean()))
        return concat(out)


def _layer_means(metric: str, series: pd.Series) -> pa.Table:
    return records(metric, series.to_numpy(), layer=series.index.to_numpy())
