"""Atlas: what every head of a model does, from ``workbench atlas``. The role grid (each head
shaded by its score on the role's own scale, the heads that hold the role outlined; click a head to
open its page), the atlas's findings, the top heads of each role (click a row to open the head), a
head picker, and a second atlas chosen in the sidebar compared by relative depth. The head page
(``views/head.py``) shows one head's evidence."""

from __future__ import annotations

import streamlit as st

from app import atlas_data as ad
from app import ui
from workbench.figures import atlas_grid
from workbench.heads import format_head

HEAD_KEY = "atlas-head"
OPEN_KEY = "atlas-open-head"  # set by a click, acted on after the figure is drawn
TOP_K = 10
HEAD_PAGE = "views/head.py"


def choose_atlas(root) -> str | None:
    """The chosen run when it is an atlas, else the atlas of a real model (ad.preferred_atlas)."""
    entries = root.runs()
    if not ad.atlas_ids(entries):
        st.info("This runs folder has no atlas. Make one with: workbench atlas --model "
                "smollm2-135m --out <runs folder>/atlas-smollm2")
        return None
    return ad.preferred_atlas(entries, st.session_state.get(ui.RUN_KEY))


def select(layer: int, head: int) -> None:
    """A click on the grid: open that head's page (after the page has drawn)."""
    st.session_state[HEAD_KEY] = format_head((layer, head))
    st.session_state[OPEN_KEY] = format_head((layer, head))


def open_head(atlas_id: str, label: str) -> None:
    """Go to the head page of ``label`` in atlas ``atlas_id`` (a new browser history entry)."""
    st.switch_page(HEAD_PAGE, query_params={"run": atlas_id, "head": label})


def grid(atlas: ad.AtlasDoc, chosen: tuple[int, int]) -> None:
    st.caption(ui.literal(f"{atlas.model}: {atlas.n_layers} layers x {atlas.n_heads} heads. "
                          "Shade: the head's score on the role's own scale (fraction of the "
                          "pattern's ceiling, share of attention, 1 - normalised entropy, or "
                          "score / the role's largest); outlined: the head holds the role "
                          "(the atlas's rule and threshold); black square: the chosen head. "
                          "Click a head to open its page."))
    ui.show_plot(atlas_grid(atlas.heads, atlas.roles(), name=f"{atlas.run_id}-atlas"),
                 key=ui.plot_key("atlas", atlas.run_id), on_click=select, xy=("head", "layer"),
                 chosen=chosen)


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
                          f"{doc.get('reason') or ''} Click a row to open the head."))
    top = ad.top_heads(atlas, role, TOP_K)
    event = st.dataframe(top, hide_index=True, width="stretch", key=f"atlas-top-{role}",
                         on_select="rerun", selection_mode="single-row")
    rows = (event.get("selection") or {}).get("rows") if isinstance(event, dict) else \
        getattr(getattr(event, "selection", None), "rows", None)
    if rows:
        label = str(top.iloc[rows[0]]["head"])
        if st.session_state.get("atlas-top-picked") != (role, label):
            st.session_state["atlas-top-picked"] = (role, label)
            st.session_state[HEAD_KEY] = label
            st.session_state[OPEN_KEY] = label


def chosen_head(atlas: ad.AtlasDoc) -> tuple[int, int]:
    """The chosen head (default: the top induction head)."""
    labels = {format_head(h) for h in zip(atlas.heads["layer"], atlas.heads["head"])}
    if st.session_state.get(HEAD_KEY) not in labels:
        st.session_state[HEAD_KEY] = format_head(ad.default_head(atlas))
    return ad.parse_label(st.session_state[HEAD_KEY])


def pick_head(atlas: ad.AtlasDoc) -> None:
    """A head picker and the button that opens its page."""
    labels = [format_head(h) for h in zip(atlas.heads["layer"], atlas.heads["head"])]
    left, right = st.columns([1, 3], vertical_alignment="bottom")
    label = left.selectbox("Head", labels, key=HEAD_KEY)
    if right.button(f"Open the page of {label}", key="atlas-open"):
        st.session_state[OPEN_KEY] = label


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
        grid(atlas, chosen_head(atlas))
        top_tables(atlas)
        pick_head(atlas)
        other = ui.compared_run()
        if other and other in ad.atlas_ids(root.runs()):
            with ui.guard():
                compare(root, atlas, other)
    wanted = st.session_state.pop(OPEN_KEY, None)
    if wanted:
        open_head(atlas_id, wanted)
