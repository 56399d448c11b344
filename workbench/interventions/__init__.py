"""Interventions on attention heads (METHODS.md section 7): a declarative spec, its validation,
the hooks that carry it out, a check that edits take effect, and recorded evaluations with sweeps.

Notebook use::

    from workbench.interventions import applied, check_spec, parse_spec
    checked = check_spec(model, parse_spec([{"op": "scale_head", "heads": ["4.0"], "alpha": 2}]),
                         tokenized)
    with applied(model, checked, batch):
        logits = model.bridge(batch.input_ids, attention_mask=batch.attention_mask)
"""

from workbench.interventions.check import Checked, check_spec
from workbench.interventions.hooks import applied, intervention_hooks
from workbench.interventions.spec import (SWEEPABLE, Spec, as_spec, load_spec, parse_spec,
                                          with_value)

__all__ = ["SWEEPABLE", "Checked", "Spec", "applied", "as_spec", "check_spec", "intervention_hooks",
           "load_spec", "parse_spec", "with_value"]
