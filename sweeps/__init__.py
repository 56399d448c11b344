"""Sweeps: models x prompt sets x jobs, sharded by (model, prompt chunk), on a local or Ray engine.

Imports workbench/, probes/ (and circuits/ through job kinds); workbench core never imports it.
"""

from sweeps import circuit_jobs  # noqa: F401 - registers the head_patching job kind
from sweeps.jobs import JOB_KINDS, Job, ProbesJob, register_job_kind
from sweeps.spec import SweepSpec, load_spec, parse_spec
from sweeps.sweep import SweepOptions, run_sweep

__all__ = ["JOB_KINDS", "Job", "ProbesJob", "SweepOptions", "SweepSpec", "load_spec",
           "parse_spec", "register_job_kind", "run_sweep"]
