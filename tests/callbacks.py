"""Callbacks that only tests use, given to `cli.py` subprocesses with `--trainer.callbacks+=tests.callbacks.X`
(the subprocess gets the repository on PYTHONPATH)."""

import os
import signal
import time

import lightning.pytorch as pl


class SendSignal(pl.Callback):
    """Sends `signals` (names such as "SIGTERM") to its own process after training batch `step`, on `rank`:
    a preemption arriving mid-epoch, at a known point."""

    def __init__(self, step: int, signals: list[str], rank: int = 0) -> None:
        self.step = step
        self.signals = [signal.Signals[name] for name in signals]
        self.rank = rank

    def on_train_batch_end(self, trainer: "pl.Trainer", *args: object) -> None:
        if trainer.global_step == self.step and trainer.global_rank == self.rank:
            print(f"rank {trainer.global_rank} sends itself {[s.name for s in self.signals]}", flush=True)
            for signum in self.signals:
                os.kill(os.getpid(), signum)


class CrashRank(pl.Callback):
    """Makes rank `rank` die abruptly (os._exit, no clean-up) after training batch `step`."""

    def __init__(self, step: int, rank: int = 1) -> None:
        self.step = step
        self.rank = rank

    def on_train_batch_end(self, trainer: "pl.Trainer", *args: object) -> None:
        if trainer.global_step == self.step and trainer.global_rank == self.rank:
            print(f"rank {self.rank} crashes", flush=True)
            os._exit(3)


class SlowDown(pl.Callback):
    """Sleeps `seconds` after every training batch, so a test can signal a run while it trains."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, *args: object) -> None:
        time.sleep(self.seconds)
