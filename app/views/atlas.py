"""Atlas: what every head of a model does, from ``workbench atlas``. The role grid (click a head),
the atlas's findings, the top heads of each role, and one head's evidence across the atlas's part
runs: its score and rank on every role and its attention pattern on example prompts (from a part
run that stores patterns; else on the Live pattern page). A second atlas chosen in the sidebar is
compared by relative depth."""

from __future__ import annotations

import streamlit as st

from app import atlas_data as ad
from app import ui
from app.patterns import pattern_metrics, stored_pattern
from workbench.figures import atlas_grid

HEAD_KEY = "atlas-head"
TOP_K = 10


def choose_atlas(root) -> str | None:
    """The chosen run when it is an atlas, else the newest atlas of the runs folder."""
    ids = ad.atlas_ids(root.runs())
    if not ids:
        st.info("This runs folder has no atlas. Make one with: workbench atlas --model "
                "smollm2-135m --out <runs folder>/atlas-smollm2")
        return None
    chosen = st.session_state.get(ui.RUN_KEY)
    return chosen if chosen in ids else ids[0]


def select(layer: int, head: int) -> None:
    """Select head ``layer.head`` (a click on the grid)."""
    st.session_state[HEAD_KEY] = ad.head_label(layer, head)


def grid(atlas: ad.AtlasDoc) -> None:
    st.caption(ui.literal(f"{atlas.model}: {atlas.n_layers} layers x {atlas.n_heads} heads. "
                          "Colour: rank in the role (yellow = first, dark = last); a white dot: "
                          "the head holds the role. Click a head to see its evidence."))
    ui.show_plot(atlas_grid(atlas.heads, atlas.roles(), name=f"{atlas.run_id}-atlas"),
                 key=ui.plot_key("atlas", atlas.run_id), on_click=select, xy=("head", "layer"))


def findings(atlas: ad.AtlasDoc) -> None:
    lines = atlas.doc.get("findings") or []
    if lines:
        with st.expander("Findings", expanded=True):
            st.markdown("\n".join(f"- {ui.literal(line)}" for line in lines))


def top_tables(atlas: ad.AtlasDoc) -> None:
    roles = atlas.roles()
    names = [r["name"] for r in roles]
    role = st.selectbox("Role", names, index=names.index("induction") if "induction" in names
                        else 0, key="atlas-role",
                        format_func=lambda n: next(r["label"] for r in roles if r["name"] == n))
    doc = next(r for r in roles if r["name"] == role)
    st.caption(ui.literal(f"Top {TOP_K} heads by {doc.get('table')} · {doc.get('metric')} "
                          f"(held: {doc.get('rule')} {doc.get('threshold')}). "
                          f"{doc.get('reason') or ''}"))
    top = ad.top_heads(atlas, role, TOP_K)
    event = st.dataframe(top, hide_index=True, width="stretch", key="atlas-top",
                         on_select="rerun", selection_mode="single-row")
    rows = (event.get("selection") or {}).get("rows") if isinstance(event, dict) else \
        getattr(getattr(event, "selection", None), "rows", None)
    if rows:
        label = str(top.iloc[rows[0]]["head"])
        if st.session_state.get("atlas-top-picked") != label:
            st.session_state["atlas-top-picked"] = label
            st.session_state[HEAD_KEY] = label


def pick_head(atlas: ad.AtlasDoc) -> tuple[int, int]:
    """The head picker; default: the top induction head."""
    labels = [ad.head_label(la, he) for la, he in zip(atlas.heads["layer"], atlas.heads["head"])]
    if st.session_state.get(HEAD_KEY) not in labels:
        st.session_state[HEAD_KEY] = ad.head_label(*ad.default_head(atlas))
    label = st.selectbox("Head", labels, key=HEAD_KEY)
    return ad.parse_label(label)


def head_evidence(root, atlas: ad.AtlasDoc, layer: int, head: int) -> None:
    st.subheader(f"Head {ad.head_label(layer, head)} (layer {layer}, head {head})")
    st.dataframe(ad.evidence(atlas, layer, head), hide_index=True, width="stretch")
    available = {r.run_id for r in root.runs() if r.manifest is not None}
    with_patterns = []
    for part, run_id in atlas.part_runs().items():
        if run_id in available:
            infos = ui.infos(root, run_id)
            if pattern_metrics(infos):
                with_patterns.append((part, run_id, infos))
    if not with_patterns:
        st.info("None of the atlas's part runs stores attention patterns: see this head's "
                "pattern on any prompt, computed live with the model.")
        if st.button(f"Live pattern of {ad.head_label(layer, head)}", key="atlas-live"):
            live_pattern(atlas, layer, head)
        return
    st.markdown("**Attention pattern on the example prompts**")
    part, run_id, infos = with_patterns[0]
    st.caption(ui.literal(f"from part run {run_id} ({part})"))
    stored_pattern(root, run_id, infos, layer, head, "atlas")


def live_pattern(atlas: ad.AtlasDoc, layer: int, head: int) -> None:
    """Open the Live pattern page on this head with the atlas's model chosen."""
    st.session_state["pattern-layer"], st.session_state["pattern-head"] = layer, head
    st.session_state["pattern-view"] = "One head"
    spec = atlas.doc.get("model_spec") or atlas.model
    st.session_state["pattern-model-default"] = spec
    st.switch_page("views/pattern.py")


def compare(root, atlas: ad.AtlasDoc, other_id: str) -> None:
    st.subheader("Compare with another atlas")
    other = ad.load_atlas(root, other_id)
    table, warning = ad.compare_atlases(atlas, other)
    st.code(f"a: {atlas.run_id} ({atlas.model})\nb: {other.run_id} ({other.model})",
            language=None)
    if warning:
        st.warning(ui.literal(warning))
    else:
        st.caption("Same model: heads match by index; shares per third of depth.")
    st.dataframe(table, hide_index=True, width="stretch")


root = ui.runs_root()
st.title("Atlas")
atlas_id = choose_atlas(root)
if atlas_id:
    with ui.guard():
        atlas = ad.load_atlas(root, atlas_id)
        st.code(atlas_id, language=None)
        findings(atlas)
        grid(atlas)
        top_tables(atlas)
        layer, head = pick_head(atlas)
        with ui.guard():
            head_evidence(root, atlas, layer, head)
        other = ui.compared_run()
        if other and other in ad.atlas_ids(root.runs()):
            with ui.guard():
                compare(root, atlas, other)
