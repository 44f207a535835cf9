"""Ending a multi-process run whose training stopped making progress: a rank died or hangs, and the others
wait for it in a collective."""

import os
import sys
import threading
import time
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from ae_lightning.errors import ConfigError


class StepWatchdog(Callback):
    """Stops every process of a run with several processes (DDP) when no step has finished for `minutes`.

    When one rank dies, the others wait for it in their next collective. gloo notices a closed connection,
    but NCCL waits out the process group's timeout (30 minutes by default: `DDPStrategy(timeout=)`), and a
    rank that hangs alive is noticed by neither. Here a thread on each rank watches the training and
    validation steps from the start of training: when none has finished for `minutes`, it prints one line
    and ends its process (exit status 1), so the job ends, and a scheduler requeues or reports it, in minutes.
    Data preparation and set-up (a folder decoded by rank zero while the others wait) come before training
    starts, and keep the process group's own timeout. The CLI adds it to every run; a single process is not
    watched.

    Args:
        minutes: how long the slowest step, validation batch or checkpoint save may take; 0 turns it off.
    """

    def __init__(self, minutes: float = 10.0) -> None:
        if minutes < 0:
            raise ConfigError(f"minutes must be >= 0 (0 turns the watchdog off), got {minutes}")
        self.minutes = minutes
        self._last_step = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self.minutes == 0 or trainer.world_size < 2:
            return
        self._last_step = time.monotonic()
        self._stop.clear()
        rank = trainer.global_rank
        self._thread = threading.Thread(target=self._watch, args=(rank,), name="StepWatchdog", daemon=True)
        self._thread.start()

    def _watch(self, rank: int) -> None:
        limit = self.minutes * 60
        while not self._stop.wait(min(limit / 4, 10.0)):
            if time.monotonic() - self._last_step > limit:
                sys.stderr.write(
                    f"error: rank {rank}: no training or validation step finished for {self.minutes:g} "
                    "minutes: another rank has probably died or hangs (its own output says why); ending this "
                    "process (--step_watchdog.minutes sets the limit)\n"
                )
                sys.stderr.flush()
                os._exit(1)  # the main thread is blocked in a collective: nothing else would return

    def beat(self, *args: Any) -> None:
        """A step (or an evaluation batch, an epoch's end) finished."""
        self._last_step = time.monotonic()

    on_train_batch_end = on_validation_batch_end = on_validation_start = beat
    on_validation_end = on_train_epoch_start = on_train_epoch_end = beat

    def on_train_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._disarm()

    def on_exception(
        self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", exception: BaseException
    ) -> None:
        self._disarm()

    def teardown(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        self._disarm()

    def _disarm(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._thread = None
