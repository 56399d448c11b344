"""Command groups of the ``workbench`` CLI (see :mod:`workbench_cli.commands.common`)."""
