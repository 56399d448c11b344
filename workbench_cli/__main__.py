"""``python -m workbench_cli``: the same as the ``workbench`` console script."""

from workbench_cli.cli import main

main()
