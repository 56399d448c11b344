"""Head importance, pruning curves and learned head gates (METHODS.md section 9).

* :mod:`pruning.gates`: per-head gates on ``blocks.{l}.attn.hook_z`` and the hard-concrete
  distribution of L0 gates (Louizos et al. 1712.01312; Voita et al. 1905.09418).
* :mod:`pruning.objectives`: the losses a gate is judged on (LM loss on natural text, IOI logit
  difference).
* :mod:`pruning.importance`: Michel et al. (1905.10650) head importance ``E_x |dL/dg_h|``.
* :mod:`pruning.prune`: the pruning curve (importance order against random orders).
* :mod:`pruning.learn`: L0 gates trained with the model frozen; the learned gates as a
  ``scale_head`` intervention spec (MoH, arXiv 2410.11842).
* :mod:`pruning.run`: the run directory (kind ``heads``) the ``workbench heads`` commands write;
  :mod:`pruning.execute`: the three jobs (importance, prune, learn-gates) that fill it.

Dependencies: this package imports ``workbench``; ``workbench`` imports it only inside the
``workbench heads`` command bodies.
"""
