"""Attention Workbench: hook-based probes, circuits and interventions on attention heads.

The core package: model loading (:mod:`workbench.models`), prompt sets (:mod:`workbench.prompts`,
:mod:`workbench.tokens`), the run loop (:mod:`workbench.run`), records and the parquet store
(:mod:`workbench.records`, :mod:`workbench.store`) and the CLI (:mod:`workbench.cli`).
"""

__version__ = "0.1.0"
