"""Atlases in the runs folder, read without torch: ``atlas.parquet`` (one row per head, per role a
score, a rank and a label) and ``atlas.json`` (roles, part runs, findings), as written by
``workbench atlas`` (see ``atlas/build.py``). Pure selection and reshaping; the scores, ranks,
labels and findings are the atlas's own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
import streamlit as st

from app.data import RunEntry, RunsRoot
from atlas.findings import BANDS, band as depth_band, head_name as head_label  # torch-free
from workbench.errors import RunStateError
from workbench.heads import parse_head


@dataclass(frozen=True)
class AtlasDoc:
    """An atlas read back: ``heads`` is ``atlas.parquet``, ``doc`` is ``atlas.json``."""

    run_id: str
    heads: pd.DataFrame
    doc: dict

    @property
    def n_layers(self) -> int:
        return int((self.doc.get("model") or {}).get("n_layers") or self.heads["layer"].max() + 1)

    @property
    def n_heads(self) -> int:
        return int((self.doc.get("model") or {}).get("n_heads") or self.heads["head"].max() + 1)

    @property
    def model(self) -> str:
        return str((self.doc.get("model") or {}).get("name") or "?")

    def roles(self) -> list[dict]:
        """The roles the atlas measured (some score is not NaN), in the atlas's order."""
        return [r for r in self.doc.get("roles") or []
                if f"{r['name']}_score" in self.heads and self.heads[f"{r['name']}_score"]
                .notna().any()]

    def part_runs(self) -> dict[str, str]:
        """Part name -> run id of the runs the atlas was built from."""
        return {part: str(info.get("run_id")) for part, info in (self.doc.get("runs") or {}).items()
                if isinstance(info, dict) and info.get("run_id")}


def atlas_ids(entries: list[RunEntry]) -> list[str]:
    """The runs of kind ``atlas``, in the runs folder's order (newest first)."""
    return [e.run_id for e in entries if (e.manifest or {}).get("kind") == "atlas"]


TINY_PREFIXES = ("tiny-", "random", "synthetic-tiny")


def preferred_atlas(entries: list[RunEntry], wanted: str | None = None) -> str | None:
    """The atlas to open: ``wanted`` when it is an atlas; else the atlas of a real model first
    (not a tiny random test model: names starting ``tiny-`` / ``random``), the largest model
    (layers x heads) first, then the newest. None when the runs folder has no atlas."""
    atlases = [e for e in entries if (e.manifest or {}).get("kind") == "atlas"]
    if wanted in {e.run_id for e in atlases}:
        return wanted
    if not atlases:
        return None

    def order(item: tuple[int, RunEntry]) -> tuple:
        i, entry = item
        model = (entry.manifest or {}).get("model") or {}
        name = str(model.get("name") or "").lower()
        size = int(model.get("n_layers") or 0) * int(model.get("n_heads") or 0)
        status = (entry.manifest or {}).get("status")
        return (status != "complete", name.startswith(TINY_PREFIXES), -size, i)

    return sorted(enumerate(atlases), key=order)[0][1].run_id


def load_atlas(root: RunsRoot, run_id: str) -> AtlasDoc:
    """The atlas in run folder ``run_id``.

    Raises:
        RunStateError: the folder holds no finished atlas.
    """
    parquet, doc = root.file(run_id, "atlas.parquet"), root.file(run_id, "atlas.json")
    if not parquet.is_file() or not doc.is_file():
        raise RunStateError(f"run {run_id!r} holds no finished atlas (atlas.parquet and "
                            "atlas.json); it may still be running")
    heads, text = _read(str(parquet), parquet.stat().st_mtime_ns, str(doc),
                        doc.stat().st_mtime_ns)
    return AtlasDoc(run_id, heads, json.loads(text))


@st.cache_data(max_entries=16, show_spinner=False)
def _read(parquet: str, _stamp: int, doc: str, _doc_stamp: int) -> tuple[pd.DataFrame, str]:
    with open(doc, encoding="utf-8") as fh:
        return pd.read_parquet(parquet), fh.read()


def parse_label(label: str) -> tuple[int, int]:
    """``"L14H3"`` (or ``"14.3"``) -> (14, 3)."""
    return parse_head(label)


def top_heads(atlas: AtlasDoc, role: str, k: int = 10) -> pd.DataFrame:
    """The ``k`` heads ranked first on ``role``: rank, head, layer, score, held (the label),
    other roles the head holds."""
    h = atlas.heads.dropna(subset=[f"{role}_rank"]).sort_values(f"{role}_rank", kind="stable")
    h = h.head(k)
    return pd.DataFrame({
        "rank": h[f"{role}_rank"].astype("int64").to_numpy(),
        "head": [head_label(layer, head) for layer, head in zip(h["layer"], h["head"])],
        "layer": h["layer"].astype("int64").to_numpy(),
        "score": h[f"{role}_score"].astype("float64").round(4).to_numpy(),
        "held": h[role].astype(bool).to_numpy(),
        "roles": h["roles"].fillna("").astype(str).to_numpy() if "roles" in h else ""})


def default_head(atlas: AtlasDoc) -> tuple[int, int]:
    """The top induction head when the atlas measured induction, else the top head of its
    first measured role."""
    names = [r["name"] for r in atlas.roles()]
    role = "induction" if "induction" in names else names[0]
    top = atlas.heads.sort_values(f"{role}_rank", kind="stable").iloc[0]
    return int(top["layer"]), int(top["head"])


def compare_atlases(a: AtlasDoc, b: AtlasDoc) -> tuple[pd.DataFrame, str | None]:
    """Per role and third of depth, the share of heads holding the role in each atlas (heads
    aligned by relative depth, layer / n_layers: indices of different models are not
    comparable), and a warning when the models differ."""
    warning = None
    if (a.model, a.n_layers, a.n_heads) != (b.model, b.n_layers, b.n_heads):
        warning = (f"The models differ ({a.model} {a.n_layers}x{a.n_heads} vs {b.model} "
                   f"{b.n_layers}x{b.n_heads}): head indices are not comparable, so heads are "
                   "aligned by relative depth (layer / n_layers, in thirds).")
    names = [r["name"] for r in a.roles() if r["name"] in {s["name"] for s in b.roles()}]
    rows = []
    for name in names:
        for i, band in enumerate(BANDS):
            share = []
            for at in (a, b):
                mask = depth_band(at.heads["layer"].to_numpy(), at.n_layers) == i
                share.append(float(at.heads.loc[mask, name].mean()) if mask.any() else np.nan)
            rows.append({"role": name, "depth": band, "a share": round(share[0], 3),
                         "b share": round(share[1], 3),
                         "b - a": round(share[1] - share[0], 3)})
    return pd.DataFrame(rows), warning
