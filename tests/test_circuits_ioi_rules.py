"""The IOI class rules (:func:`circuits.ioi_classes.classify`) on evidence built by hand: one head
per class meets its rule and a decoy beside it fails exactly one condition, so every class and
every cut-off is exercised with a known answer."""

from __future__ import annotations

import numpy as np
import pytest

from circuits.ioi_classes import CLASSES, IOICriteria, classify
from circuits.ioi_evidence import ATTENTION
from workbench.errors import InputError

# --- the class rules on hand-built evidence ---------------------------------------------------

L, H = 6, 4


def _evidence():
    """Evidence for a 6-layer, 4-head model where one head of each class meets its rule and a
    decoy next to it fails exactly one condition."""
    zero = np.zeros((L, H))
    nan = np.full((L, H), np.nan)
    att = {name: zero.copy() for name in ATTENTION}
    path = {s: (nan.copy(), nan.copy(), nan.copy()) for s in
            ("name_mover", "s_inhibition", "induction", "previous_token")}
    copy = {}

    def put(stage, head, score, lo, hi):
        for j, v in enumerate((score, lo, hi)):
            path[stage][j][head] = v
    # name movers: 5.0 yes; 5.1 attends S more than IO; 5.2 does not copy; 4.3 interval spans 0
    for head, io, s, c in (((5, 0), .5, .1, .9), ((5, 1), .1, .5, .9), ((5, 2), .5, .1, .2),
                           ((4, 3), .5, .1, .9)):
        att["END->IO"][head], att["END->S"][head] = io, s
        copy[head] = (c, 0.0)
    put("name_mover", (5, 0), .3, .2, .4)
    put("name_mover", (5, 1), .3, .2, .4)
    put("name_mover", (5, 2), .3, .2, .4)
    put("name_mover", (4, 3), .3, -.1, .6)
    # negative name mover 5.3
    att["END->IO"][5, 3], att["END->S"][5, 3] = .4, .1
    copy[(5, 3)] = (0.0, .8)
    put("name_mover", (5, 3), -.2, -.3, -.1)
    # S-inhibition 3.0 (END->S2); decoy 3.1 attends IO more than S2
    for head, s2, io in (((3, 0), .4, .1), ((3, 1), .3, .35)):
        att["END->S2"][head], att["END->IO"][head] = s2, io
        put("s_inhibition", head, .1, .05, .15)
    # induction 2.0 (S2->S1+1), duplicate token 2.1 (S2->S1); decoy 2.2 path below min_path
    att["S2->S1+1"][2, 0], att["S2->S1"][2, 0] = .5, .1
    att["S2->S1"][2, 1], att["S2->S1+1"][2, 1] = .6, .05
    att["S2->S1+1"][2, 2] = .5
    put("induction", (2, 0), .05, .01, .1)
    put("induction", (2, 1), .04, .01, .08)
    put("induction", (2, 2), .01, .001, .02)
    # previous token 1.0; decoy 1.1 attends S1+1->S1 too little
    att["S1+1->S1"][1, 0], att["S1+1->S1"][1, 1] = .7, .05
    put("previous_token", (1, 0), .03, .01, .05)
    put("previous_token", (1, 1), .03, .01, .05)
    # backup: 4.0 rises and attends IO; 4.1 rises but attends S; 4.2 interval spans 0
    mean, lo, hi = zero.copy(), zero.copy(), zero.copy()
    for head, rise, low, io, s in (((4, 0), .3, .1, .3, .1), ((4, 1), .3, .1, .1, .3),
                                   ((4, 2), .3, -.1, .3, .1)):
        mean[head], lo[head], hi[head] = rise, low, rise + .2
        att["END->IO"][head], att["END->S"][head] = io, s
    return path, att, copy, (mean, lo, hi)


def test_classify_picks_the_head_built_for_each_class():
    path, att, copy, backup = _evidence()
    got = classify(path, att, copy, backup, IOICriteria(min_path=0.02, min_attention=0.1,
                                                        min_copy=0.5, min_backup=0.05))
    assert got == {(5, 0): "name_mover", (5, 3): "negative_name_mover", (3, 0): "s_inhibition",
                   (2, 0): "induction", (2, 1): "duplicate_token", (1, 0): "previous_token",
                   (4, 0): "backup_name_mover"}
    assert set(got.values()) == set(CLASSES)  # every class's rule is exercised


@pytest.mark.parametrize("cut,value,lost", [
    ("min_path", 0.35, (5, 0)), ("min_path", 0.25, (5, 3)), ("min_copy", 0.95, (5, 0)),
    ("min_attention", 0.45, (3, 0)), ("min_attention", 0.55, (2, 0)),
    ("min_attention", 0.65, (2, 1)), ("min_attention", 0.75, (1, 0)),
    ("min_backup", 0.35, (4, 0)), ("min_path", 0.045, (2, 1))])
def test_each_cut_off_decides(cut, value, lost):
    path, att, copy, backup = _evidence()
    criteria = IOICriteria(**{"min_path": 0.02, "min_attention": 0.1, "min_copy": 0.5,
                              "min_backup": 0.05, cut: value})
    assert lost not in classify(path, att, copy, backup, criteria)


def test_bad_criteria_are_refused():
    with pytest.raises(InputError, match="min_path must be a number in \\[0, 1\\], got nan"):
        IOICriteria(min_path=float("nan"))
    with pytest.raises(InputError, match="n_candidates must be in \\[1, 1000\\], got 0"):
        IOICriteria(n_candidates=0)
