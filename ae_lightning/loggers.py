"""Weights & Biases tracking that works without an account or network: offline runs to sync later."""

import netrc
import os
import shutil
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from lightning.pytorch import Trainer
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_only

#: name of the CLI's resolved config among the W&B run's files (W&B keeps its own `config.yaml` there)
CONFIG_FILE_NAME = "cli_config.yaml"

#: the server W&B talks to when WANDB_BASE_URL is not set
DEFAULT_WANDB_HOST = "https://api.wandb.ai"


def offline_reason() -> str | None:
    """Why a run must go offline, or None when W&B can go online or the user chose a mode.

    W&B itself would prompt for an API key (or fail, without a terminal) when it has none; this checks first
    where W&B looks: WANDB_API_KEY, WANDB_IDENTITY_TOKEN_FILE, and the netrc entry `wandb login` writes.
    """
    if os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY"):
        return None
    if os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return None
    host = urlsplit(os.environ.get("WANDB_BASE_URL") or DEFAULT_WANDB_HOST).netloc
    path = Path(os.environ.get("NETRC") or "~/.netrc").expanduser()
    try:
        if netrc.netrc(path).authenticators(host):
            return None
    except (OSError, netrc.NetrcParseError):
        pass  # no readable netrc: no login
    return f"no API key found (neither WANDB_API_KEY nor a `wandb login` for {host})"


class WandbLogger(LightningWandbLogger):
    """Lightning's WandbLogger, made safe to run anywhere and to drive from LightningCLI.

    - Without an API key or login (and without WANDB_MODE) the run is logged offline, and one line says
      where and how to upload it (`wandb sync`); when the server cannot be reached in W&B's `init_timeout`
      (WANDB_INIT_TIMEOUT, 90 s by default) the run falls back to offline the same way. It never waits on
      a prompt.
    - The CLI's resolved config becomes the run config, nested, once (see `log_config`); the trainer's flat
      copy of the model's and datamodule's hyperparameters is then not logged again.
    - `tags`, `group`, `notes`, `entity`, `job_type` are arguments, so they can be set from a YAML or the
      command line.
    - The run keeps its W&B files in `save_dir/wandb/`, and its checkpoints and `config.yaml` in
      `save_dir/<project>/<run id>/`.

    Args:
        project: W&B project (default: $WANDB_PROJECT, else `ae_lightning`).
        name: display name of the run (default: one W&B makes up).
        save_dir: folder of the run's files (default: $WANDB_DIR, else `runs`).
        group: group of runs, e.g. the runs of one experiment.
        tags: tags of the run.
        notes: a longer description of the run.
        entity: W&B user or team (default: the key's own).
        job_type: type of the run, e.g. `train`.
        log_model: upload checkpoints as W&B artifacts: `true` the best and last at the end of training,
            `all` each one when it is saved. Offline, they are recorded in the run and sent by `wandb sync`.
        offline: log offline even when W&B could go online.
        id: id of a run to resume (or start with that id).
        prefix: prefix of every metric name.
        checkpoint_name: name of the model artifact (default: `model-<run id>`).
        **kwargs: any other argument of `wandb.init`.
    """

    def __init__(
        self,
        project: str | None = None,
        name: str | None = None,
        save_dir: str | None = None,
        group: str | None = None,
        tags: list[str] | None = None,
        notes: str | None = None,
        entity: str | None = None,
        job_type: str | None = None,
        log_model: bool | Literal["all"] = False,
        offline: bool = False,
        id: str | None = None,
        prefix: str = "",
        checkpoint_name: str | None = None,
        **kwargs: Any,
    ) -> None:
        # LightningCLI passes every `wandb.init` argument it knows, None when unset: None must not replace
        # Lightning's own choices (resume="allow")
        kwargs = {key: value for key, value in kwargs.items() if value is not None}
        if offline:
            # a mode rather than Lightning's `offline`, which refuses log_model: W&B records artifacts offline
            kwargs["mode"] = "offline"
        super().__init__(
            project=project or os.environ.get("WANDB_PROJECT", "ae_lightning"),
            name=name,
            save_dir=save_dir or os.environ.get("WANDB_DIR", "runs"),
            id=id,
            log_model=log_model,
            prefix=prefix,
            checkpoint_name=checkpoint_name,
            group=group,
            tags=tags,
            notes=notes,
            entity=entity,
            job_type=job_type,
            **kwargs,
        )
        if self._wandb_init.get("anonymous") is None:
            del self._wandb_init["anonymous"]  # W&B warns about the setting when it is passed at all
        self._config_logged = False

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        """The W&B run, started on first use (on global rank zero only): offline when it cannot be online."""
        if self._experiment is None:
            # W&B looks for a git repository in its folder, and warns when the folder is not there yet
            os.makedirs(self._save_dir, exist_ok=True)
        if self._experiment is not None or self._wandb_init.get("mode"):
            return super().experiment
        import wandb

        reason = offline_reason()
        if reason is not None:
            self._wandb_init["mode"] = "offline"
        try:
            run = super().experiment
        except wandb.errors.CommError as err:
            reason = f"the W&B server did not answer ({str(err).splitlines()[0]})"
            self._wandb_init["mode"] = "offline"
            run = super().experiment
        if reason is not None:
            folder = run.settings.sync_dir
            rank_zero_info(
                f"W&B: {reason}, so this run is logged offline in {folder}; "
                f"upload it later with `wandb sync {folder}`"
            )
        return run

    @property
    def continues_run(self) -> bool:
        """Whether this logger was given the id of a run to continue, so its folder may hold that run's
        files (`config.yaml`) already."""
        return self._id is not None

    @rank_zero_only
    def log_config(self, config: dict[str, Any], config_file: str | Path) -> None:
        """Makes `config` (the CLI's resolved config, nested) the run config and saves `config_file` with the
        run; the trainer's flat hyperparameters, a copy of part of it, are not logged after this."""
        run = self.experiment
        run.config.update(config, allow_val_change=True)
        saved = Path(run.dir) / CONFIG_FILE_NAME
        shutil.copyfile(config_file, saved)
        run.save(str(saved), base_path=run.dir, policy="now")  # recorded in the run, so `wandb sync` sends it
        self._config_logged = True

    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        if not self._config_logged:
            super().log_hyperparams(params)

    @rank_zero_only
    def finish(self) -> None:
        """Ends the W&B run, if one was started (Lightning leaves it open until the process exits); a later
        use of the logger starts a new run."""
        if self._experiment is not None:
            self._experiment.finish()
            self._experiment = None


def finish_runs(trainer: Trainer) -> None:
    """Ends the tracked run of every W&B logger of `trainer`, so its files are complete and the next command
    in this process starts a run of its own instead of logging into this one."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.finish()
