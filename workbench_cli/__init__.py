"""The ``workbench`` command line: the composition root above the core package (see
:mod:`workbench_cli.cli`). It is the one place that imports every layer: ``workbench`` (the core),
``probes``, ``circuits``, ``sweeps``, ``atlas`` and ``pruning``."""
