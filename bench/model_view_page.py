"""The page :mod:`bench.app_views` serves: the all-heads view of synthetic patterns
(``?view=canvas|plotly&n=<tokens>``): ``canvas`` is the app's model view (one canvas,
``app.components.model_view``), ``plotly`` the figure the Live pattern page drew before (one
plotly heatmap per head, ``workbench.figures.pattern_grid``). Run with ``streamlit run``."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.components import model_view  # noqa: E402
from workbench.figures import pattern_grid  # noqa: E402

N_LAYERS, N_HEADS = 30, 9  # SmolLM2-135M


@st.cache_resource  # not copied per run (a 35 MB array)
def patterns(n: int, seed: int = 0) -> np.ndarray:
    """Causal softmax patterns [30, 9, n, n] of random scores (sharp, like trained heads)."""
    rng = np.random.default_rng(seed)
    scores = rng.normal(0, 3, (N_LAYERS, N_HEADS, n, n))
    scores[..., np.triu_indices(n, 1)[0], np.triu_indices(n, 1)[1]] = -np.inf
    e = np.exp(scores - scores.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


n = int(st.query_params.get("n", "128"))
view = st.query_params.get("view", "canvas")
tokens = [f"t{i}" for i in range(n)]
st.title(f"{view} {n}")
if view == "canvas":
    model_view(patterns(n), tokens, key="bench")
else:
    st.plotly_chart(pattern_grid(patterns(n), tokens).figure("double"), theme=None,
                    key="bench", on_select="ignore")
