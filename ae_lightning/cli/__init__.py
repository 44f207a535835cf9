"""The command line: `python cli.py <command>` and the `ae-lightning` console script.

Each job in its own module: `entry` (the dispatch: `score` without Lightning, the rest LightningCLI), `app`
(AutoencoderCLI: the hooks), `resume` (`--ckpt_path` checked, `last` resolved), `setup` (the trainer the
commands get, the optimizer's check), `command` (running a command: `main`, its exit status and one-line
errors, `failures`), `parser` (short parse errors). Where a run's files go is `ae_lightning.runs`.

The names are imported when first used, so that `score` runs without importing Lightning.
"""

from ae_lightning.lazy import lazy_exports

_MODULES = {
    "AutoencoderCLI": "ae_lightning.cli.app",
    "CommandState": "ae_lightning.cli.app",
    "PREEMPTED_EXIT_CODE": "ae_lightning.cli.command",
    "main": "ae_lightning.cli.command",
    "run": "ae_lightning.cli.entry",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _MODULES)
