"""The CLI's resolved config, saved in the run's own folder and handed to loggers that keep a run config."""

import os

import lightning.pytorch as pl
import yaml
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.cli import SaveConfigCallback

from ae_lightning.errors import ConfigError
from ae_lightning.files import atomic_write
from ae_lightning.runs import run_folder


class SaveRunConfig(SaveConfigCallback):
    """Saves the resolved config as `config.yaml` in the run's folder (beside `checkpoints/`), on global
    rank zero, and gives it to every logger with a `log_config(config, config_file)` method (W&B)."""

    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        if self.already_saved:
            return
        folder = run_folder(trainer)
        path = os.path.join(folder, self.config_filename)
        fs = get_filesystem(folder)
        # a W&B run continued by its id keeps its folder: the config of this part replaces the earlier one
        overwrite = self.overwrite or any(
            getattr(logger, "continues_run", False) for logger in trainer.loggers
        )
        # decided on rank zero and broadcast, so that every rank stops, or none
        exists = trainer.strategy.broadcast(trainer.is_global_zero and fs.isfile(path))
        if exists and not overwrite:
            raise ConfigError(
                f"{path} exists already: this run's folder holds another run's config. "
                "Start a new run (another version, or no fixed W&B id), or move that folder away"
            )
        if trainer.is_global_zero:
            dumped = self.parser.dump(self.config, skip_none=False)
            if self.multifile:
                fs.makedirs(folder, exist_ok=True)
                self.parser.save(self.config, path, skip_none=False, overwrite=overwrite, multifile=True)
            else:
                with atomic_write(path, "w") as file:
                    file.write(dumped)
            config = yaml.safe_load(dumped)
            for logger in trainer.loggers:
                if callable(getattr(logger, "log_config", None)):
                    logger.log_config(config, path)
            self.save_config(trainer, pl_module, stage)
            self.already_saved = True
        # every rank knows, for later calls of setup
        self.already_saved = trainer.strategy.broadcast(self.already_saved)
