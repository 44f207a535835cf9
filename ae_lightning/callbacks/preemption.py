"""Stopping at a step's end and saving `last.ckpt` when a run is stopped by SIGTERM (preemption, `scancel`,
`kill`) or SIGUSR1, and, under SLURM, requeueing the job."""

import os
import re
import signal
import subprocess
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

from ae_lightning.callbacks.sample_grid import SampleGridCheckpoint, grid_path

#: what a rank's SIGUSR1 asked for, in increasing order (the ranks take the largest)
_NOT_SIGNALLED, _STOP, _REQUEUE = 0, 1, 2


class PreemptionCheckpoint(Callback):
    """On SIGTERM, saves `last.ckpt` (mid-epoch) in the folder of every checkpoint callback that keeps a
    `last` one (with its grid, for a `SampleGridCheckpoint`), so that `fit --ckpt_path last` continues the
    run. The CLI adds it to every run.

    Lightning turns SIGTERM into a SIGTERMException at the end of the step (of the call, with K steps per
    call) in which it arrived, so the save is at a step boundary: the checkpoint's step, loader place and
    random streams agree, and the resume is exact. Other exceptions (a crashed rank) save nothing, as a
    collective save could then wait forever for the missing rank.

    SIGUSR1 stops the run the same way, by this callback: its handler only takes note, and at the end of
    each training step (call) the ranks agree whether any of them was signalled (one small all-reduce under
    DDP), so all stop after the same step. Under SLURM it is the requeue signal (`--signal=SIGUSR1@90`): the
    run then also saves Lightning's HPC checkpoint (`<default_root_dir>/hpc_ckpt_<n>.ckpt`, which the
    requeued job resumes from) and requeues the job (`scontrol requeue`). (Lightning's own handler would
    save inside the signal handler, in the middle of a step, with a collective that the other ranks, in
    theirs, may not be at.)
    """

    def __init__(self) -> None:
        self._signalled = _NOT_SIGNALLED  # what this rank's SIGUSR1 asked for
        self._requeue = False  # what the ranks agreed
        self._previous_handler: Any = None

    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        # before Lightning sets its signal handlers, which then leave SIGUSR1 to this one
        if stage != TrainerFn.FITTING or threading.current_thread() is not threading.main_thread():
            return
        self._signalled, self._requeue = _NOT_SIGNALLED, False
        self._previous_handler = signal.signal(signal.SIGUSR1, self._on_sigusr1)

    def teardown(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGUSR1, self._previous_handler)
            self._previous_handler = None

    def _on_sigusr1(self, signum: int, frame: FrameType | None) -> None:
        """SIGUSR1: stop at the end of the step, and under SLURM requeue the job then (no collective and no
        save here: the ranks are not in step inside a signal handler)."""
        self._signalled = _REQUEUE if SLURMEnvironment.detect() else _STOP

    def on_train_batch_end(self, trainer: "pl.Trainer", *args: Any) -> None:
        """At a step's (call's) end: stops every rank if any was signalled (SIGTERMException, as SIGTERM)."""
        agreed = self._signalled
        if trainer.world_size > 1:
            flag = torch.tensor(float(self._signalled), device=trainer.strategy.root_device)
            agreed = int(trainer.strategy.reduce(flag, reduce_op="max"))
        if agreed != _NOT_SIGNALLED:
            self._signalled, self._requeue = _NOT_SIGNALLED, agreed == _REQUEUE
            rank_zero_info("Stopping at the end of this step: SIGUSR1")
            raise SIGTERMException()

    def on_exception(
        self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", exception: BaseException
    ) -> None:
        fitting = trainer.state.fn == TrainerFn.FITTING
        if not isinstance(exception, SIGTERMException) or trainer.sanity_checking or not fitting:
            return
        for callback in trainer.checkpoint_callbacks:
            if (
                not isinstance(callback, ModelCheckpoint)
                or not callback.save_last
                or callback.dirpath is None
            ):
                continue
            path = callback.format_checkpoint_name({}, callback.CHECKPOINT_NAME_LAST)
            callback.last_model_path = path  # before the save, which holds the callback's state
            trainer.save_checkpoint(path)
            if isinstance(callback, SampleGridCheckpoint) and trainer.is_global_zero:
                callback.write_grid(trainer, grid_path(path))
            rank_zero_info(f"Stopped by a signal: saved {path}; resume with --ckpt_path last")
        if self._requeue:
            self._requeue = False
            path = hpc_checkpoint_path(trainer.default_root_dir)
            trainer.save_checkpoint(path)
            rank_zero_info(f"Saved {path} for the requeued job")
            if trainer.is_global_zero:
                requeue_slurm_job()


def hpc_checkpoint_path(folder: str | Path) -> Path:
    """The next `hpc_ckpt_<n>.ckpt` in `folder`, the name Lightning resumes a requeued SLURM job from."""
    numbers = [
        int(match[1])
        for path in Path(folder).glob("hpc_ckpt_*.ckpt")
        if (match := re.fullmatch(r"hpc_ckpt_(\d+)\.ckpt", path.name))
    ]
    return Path(folder) / f"hpc_ckpt_{max(numbers, default=0) + 1}.ckpt"


def requeue_slurm_job() -> None:
    """`scontrol requeue` of this job (of its array task), as Lightning's requeue does."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ["SLURM_JOB_ID"]
    # said before, not after: the requeue ends this job's processes, often before `scontrol` returns here
    rank_zero_info(f"Requeuing SLURM job: {job}")
    try:
        done = subprocess.run(["scontrol", "requeue", job], check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        rank_zero_warn(f"Requeuing SLURM job {job} failed: {err}")
        return
    if done.returncode != 0:
        rank_zero_warn(f"Requeuing SLURM job {job} failed with error code {done.returncode}")
