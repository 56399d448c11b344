"""Command groups of the ``workbench`` CLI (see :mod:`workbench.commands.common`)."""
