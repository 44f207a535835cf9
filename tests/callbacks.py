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


class RunOutOfMemory(pl.Callback):
    """Raises torch's CUDA out-of-memory error at training batch `step`, as a GPU that is too small would."""

    def __init__(self, step: int = 0) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: "pl.Trainer", *args: object) -> None:
        if trainer.global_step == self.step:
            import torch

            raise torch.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 12.00 GiB. GPU 0 has a total capacity of 79.19 GiB of "
                "which 3.10 GiB is free."
            )


class SignalBeforeOptimizerStep(pl.Callback):
    """Sends `signals` to its own process just before optimizer step `step` (0-based) is taken: inside a
    step (after its backward), and, with K steps per call, inside a call."""

    def __init__(self, step: int, signals: list[str]) -> None:
        self.step = step
        self.signals = [signal.Signals[name] for name in signals]

    def on_before_optimizer_step(self, trainer: "pl.Trainer", *args: object) -> None:
        if trainer.global_step == self.step:
            print(f"sends itself {[s.name for s in self.signals]} inside step {self.step}", flush=True)
            for signum in self.signals:
                os.kill(os.getpid(), signum)


class StreamsByRank(pl.Callback):
    """Gives each rank its own random stream at the start of a fit (seed + rank; a resumed run then takes
    its streams from the checkpoint), and writes each rank's torch stream at the end of training to
    `<folder>/stream_<rank>.pt`, so a test compares every rank's stream with an unbroken run's."""

    def __init__(self, folder: str, seed: int = 100) -> None:
        self.folder = folder
        self.seed = seed

    def on_fit_start(self, trainer: "pl.Trainer", *args: object) -> None:
        import torch

        torch.manual_seed(self.seed + 1000 * trainer.global_rank)

    def on_train_end(self, trainer: "pl.Trainer", *args: object) -> None:
        import torch

        os.makedirs(self.folder, exist_ok=True)
        torch.save(torch.get_rng_state(), os.path.join(self.folder, f"stream_{trainer.global_rank}.pt"))


class InitialWeights(pl.Callback):
    """Keeps a copy of the module's weights as the fit starts (`weights`)."""

    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self.weights = {name: value.detach().clone() for name, value in pl_module.state_dict().items()}


class HangRank(pl.Callback):
    """Makes rank `rank` hang (sleep, alive) after training batch `step`: its peers wait in a collective."""

    def __init__(self, step: int, rank: int = 1, seconds: float = 600) -> None:
        self.step = step
        self.rank = rank
        self.seconds = seconds

    def on_train_batch_end(self, trainer: "pl.Trainer", *args: object) -> None:
        if trainer.global_step == self.step and trainer.global_rank == self.rank:
            print(f"rank {self.rank} hangs", flush=True)
            time.sleep(self.seconds)
