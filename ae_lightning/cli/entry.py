"""The entry point of `python cli.py` and of the `ae-lightning` console script: `score` runs an exported
model without Lightning; every other command is LightningCLI's."""

import sys
from collections.abc import Sequence


def run(argv: Sequence[str] | None = None) -> None:
    """Runs the command in `argv` (default: the process's arguments)."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["score"]:  # no Lightning: the exported graphs and the images only
        from ae_lightning.export.score import main as score

        score(arguments[1:])
        return
    from ae_lightning.cli.command import main

    main(None if argv is None else arguments)
