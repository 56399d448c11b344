"""Head: everything an atlas knows about one head, at a shareable address
(``/head?run=<atlas>&head=L18H6``; back and forward move between the heads opened). Its roles with
scores, ranks, thresholds and causal evidence; its IOI class and faithful circuits; its
composition partners; its direct logit attribution; its stored example patterns (hover a token to
see where it attends and what attends to it); links to the part runs and to its live pattern.
A part the atlas lacks reads "not in this atlas" (``app/head_data.py``)."""

from __future__ import annotations

import streamlit as st

from app import atlas_data as ad
from app import data, head_data, ui
from app.patterns import pattern_metrics, stored_pattern
from workbench.errors import InputError, WorkbenchError
from workbench.heads import format_head, parse_head

GOTO_KEY = "head-goto"


def atlas_of_page(root) -> str | None:
    """The atlas named by ``?run=`` or chosen in the sidebar, else the preferred atlas."""
    entries = root.runs()
    wanted = st.query_params.get("run") or st.session_state.get(ui.RUN_KEY)
    found = ad.preferred_atlas(entries, wanted)
    if found is None:
        st.info("This runs folder has no atlas. Make one with: workbench atlas --model "
                "smollm2-135m --out <runs folder>/atlas-smollm2")
    return found


def head_of_page(atlas: ad.AtlasDoc) -> tuple[int, int]:
    """The head named by ``?head=`` (``L18H6``, ``18.6``); else the atlas's default head. A head
    that does not parse or is outside the model is reported and the default shown."""
    text = st.query_params.get("head")
    if text:
        try:
            head = parse_head(text)
            head_data.head_row(atlas, *head)
            return head
        except WorkbenchError as err:
            st.error(ui.literal(f"?head=: {err}"))
    return ad.default_head(atlas)


def goto(atlas_id: str) -> None:
    """A box to type another head (any style parse_head reads); Enter opens its page."""
    def jump() -> None:
        text = st.session_state.get(GOTO_KEY, "")
        try:
            st.session_state["head-goto-to"] = format_head(parse_head(text))
        except InputError as err:
            st.session_state["head-goto-error"] = str(err)

    st.text_input("Go to head (L18H6, 18.6)", key=GOTO_KEY, on_change=jump)
    problem = st.session_state.pop("head-goto-error", None)
    if problem:
        st.error(ui.literal(problem))
    target = st.session_state.pop("head-goto-to", None)
    if target:
        st.switch_page("views/head.py", query_params={"run": atlas_id, "head": target})


def links(root, atlas: ad.AtlasDoc, name: str) -> None:
    available = {r.run_id for r in root.runs() if r.manifest is not None}
    with st.container(horizontal=True):
        st.page_link("views/atlas.py", label="Atlas", icon=":material/apps:",
                     query_params={"run": atlas.run_id})
        for part, run_id in atlas.part_runs().items():
            if run_id in available:
                st.page_link("views/heads.py", label=f"{part} run: {run_id}",
                             icon=":material/grid_on:", query_params={"run": run_id,
                                                                      "head": name})
        if st.button(f"Live pattern of {name}", key="head-live"):
            live_pattern(atlas, *parse_head(name))


def live_pattern(atlas: ad.AtlasDoc, layer: int, head: int) -> None:
    """Open the Live pattern page on this head with the atlas's model, its example prompt run
    at once, and the sidebar still on this atlas."""
    st.session_state["pattern-layer"], st.session_state["pattern-head"] = layer, head
    st.session_state["pattern-view"] = "One head"
    st.session_state["pattern-model-default"] = atlas.doc.get("model_spec") or atlas.model
    st.session_state["pattern-autorun"] = True
    st.switch_page("views/pattern.py", query_params={"run": atlas.run_id})


def roles(atlas: ad.AtlasDoc, layer: int, head: int) -> None:
    st.subheader("Roles")
    st.caption("Score and rank among all heads on every role the atlas measured, the rule that "
               "decides the label, the role's causal test (its held heads ablated vs random "
               "heads) and this head ablated alone.")
    st.dataframe(head_data.roles(atlas, layer, head), hide_index=True, width="stretch")


def classes(atlas: ad.AtlasDoc, layer: int, head: int) -> None:
    st.subheader("IOI class and faithful circuits")
    found = head_data.ioi_class(atlas, layer, head)
    if found is None:
        st.caption(f"IOI class: {head_data.NOT_IN_ATLAS}.")
    else:
        st.caption(ui.literal(f"IOI class (Wang et al. 2211.00593): {found[0]}"
                              + (f" ({found[1]})" if found[1] else "")))
    table = head_data.circuits(atlas, layer, head)
    if table is None:
        st.caption(f"Faithful circuits: {head_data.NOT_IN_ATLAS}.")
    else:
        st.dataframe(table, hide_index=True, width="stretch")


def partners(root, atlas: ad.AtlasDoc, layer: int, head: int) -> None:
    st.subheader("Composition partners")
    found = head_data.composition(root, atlas, layer, head)
    if found is None:
        st.caption(f"Composition scores (Elhage et al. 2021): {head_data.NOT_IN_ATLAS}.")
        return
    left, right = st.columns(2)
    left.caption("Earlier heads composing into this one (strongest per kind)")
    left.dataframe(found["senders"], hide_index=True, width="stretch")
    right.caption("Later heads this one composes into")
    right.dataframe(found["receivers"], hide_index=True, width="stretch")
    if not found["own"].empty:
        st.dataframe(found["own"], hide_index=True)


def attribution(root, atlas: ad.AtlasDoc, layer: int, head: int) -> None:
    st.subheader("Direct logit attribution")
    table = head_data.dla(root, atlas, layer, head)
    if table is None:
        st.caption(f"Direct logit attribution: {head_data.NOT_IN_ATLAS} (its circuits part run "
                   "has no direct_logit_attribution table; workbench circuits --dla).")
    elif table.empty:
        st.caption("The circuits part run has no DLA rows for this head.")
    else:
        st.caption("The head's direct contribution to the logit difference, mean over prompts "
                   "[2.5th, 97.5th bootstrap percentiles], in logits.")
        st.dataframe(table, hide_index=True, width="stretch")


def patterns(root, atlas: ad.AtlasDoc, layer: int, head: int) -> None:
    st.subheader("Example patterns")
    try:
        own = {"head_patterns": data.table_info(root.table(atlas.run_id, "head_patterns"))}
    except WorkbenchError:
        own = {}
    if own and pattern_metrics(own):
        st.caption("Stored by the atlas on its example prompts. Hover a token: where it attends "
                   "and what attends to it.")
        if stored_pattern(root, atlas.run_id, own, layer, head, "head-own"):
            return
    available = {r.run_id for r in root.runs() if r.manifest is not None}
    for part, run_id in atlas.part_runs().items():
        if run_id not in available:
            continue
        infos = ui.infos(root, run_id)
        if pattern_metrics(infos):
            st.caption(ui.literal(f"From part run {run_id} ({part})."))
            stored_pattern(root, run_id, infos, layer, head, "head")
            return
    st.caption(f"Stored example patterns: {head_data.NOT_IN_ATLAS}; the Live pattern button "
               "shows this head on any prompt.")


root = ui.runs_root()
atlas_id = atlas_of_page(root)
if not atlas_id:
    st.title("Head")
else:
    try:
        atlas = ad.load_atlas(root, atlas_id)
    except WorkbenchError as err:
        st.title("Head")
        st.error(ui.literal(str(err)))
        st.stop()
    layer, head = head_of_page(atlas)
    name = format_head((layer, head))
    st.query_params["run"], st.query_params["head"] = atlas_id, name
    st.title(f"Head {name}")
    st.caption(ui.literal(f"{atlas.model} ({atlas.n_layers} layers x {atlas.n_heads} heads), "
                          f"atlas {atlas_id}"))
    goto(atlas_id)
    links(root, atlas, name)
    for section in (lambda: roles(atlas, layer, head), lambda: classes(atlas, layer, head),
                    lambda: partners(root, atlas, layer, head),
                    lambda: attribution(root, atlas, layer, head),
                    lambda: patterns(root, atlas, layer, head)):
        with ui.guard():
            section()
