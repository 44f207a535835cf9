"""Counting what would make the host wait for a GPU, on a CPU.

On a GPU, a tensor turned into a Python number (`item`, `bool`, `int`, `tolist`), an op whose output size
depends on the data (`nonzero`, boolean-mask indexing, `unique`, ...) and a copy to the CPU each wait for the
device, so the host cannot queue the next kernels. On a CPU nothing waits, so these are counted where they
happen: below autograd, at the dispatcher (a `TorchDispatchMode` sees every aten op, whoever calls it), and,
for the conversions that a CPU tensor answers without an op (`tolist`, `numpy`, `cpu`, `to("cpu")`), at the
Tensor methods. `benchmarks/device_check.py` checks the same on a real GPU with
`torch.cuda.set_sync_debug_mode`.
"""

import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback
from torch.utils._python_dispatch import TorchDispatchMode

#: aten ops that wait for the device whatever their arguments: a scalar read by the host, a result whose size
#: the host must know, a bool answered to the host
WAITING_OPS = {
    "aten::_local_scalar_dense",
    "aten::nonzero",
    "aten::masked_select",
    "aten::_unique2",
    "aten::unique_dim",
    "aten::unique_consecutive",
    "aten::bincount",
    "aten::equal",
    "aten::is_nonzero",
    "aten::allclose",
}
#: aten ops that wait when an index is a boolean mask (it is turned into positions with nonzero)
MASK_INDEXING_OPS = {"aten::index", "aten::index_put", "aten::index_put_", "aten::_index_put_impl_"}


def _caller() -> str:
    """`file:line` of the innermost frame of this project's code (not of an installed package or the standard
    library, nor of this module)."""
    frames = [frame for frame in traceback.extract_stack() if not frame.filename.endswith("syncs.py")]
    ours = [frame for frame in frames if "/lib/python" not in frame.filename] or frames
    return f"{Path(ours[-1].filename).name}:{ours[-1].lineno}"


def _data_loader_seed() -> bool:
    """Whether this is torch's DataLoader drawing its per-iterator seed from its CPU generator (no device)."""
    stack = traceback.extract_stack()
    return any(frame.filename.endswith("torch/utils/data/dataloader.py") for frame in stack)


@dataclass
class HostSyncs:
    """What was counted: one `op @ caller` entry per occurrence, while `active`."""

    active: bool = False
    found: list[str] = field(default_factory=list)

    def record(self, what: str) -> None:
        if self.active and not _data_loader_seed():
            self.found.append(f"{what} @ {_caller()}")


class _Dispatch(TorchDispatchMode):
    def __init__(self, syncs: HostSyncs) -> None:
        super().__init__()
        self.syncs = syncs

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = func._schema.name
        if name in WAITING_OPS:
            self.syncs.record(name)
        elif name in MASK_INDEXING_OPS and _has_mask(args):
            self.syncs.record(f"{name} with a boolean mask")
        elif name == "aten::_to_copy" and str(kwargs.get("device", "")) == "cpu":
            self.syncs.record("a copy to the CPU")
        elif name == "aten::lift_fresh" and _called_by_this_project():
            self.syncs.record("a tensor made of host data")  # torch.tensor / as_tensor: on a GPU, a copy
        return func(*args, **kwargs)


def _called_by_this_project() -> bool:
    """Whether the op was called from this project's code directly (not through Lightning or torchmetrics,
    whose numbers made into tensors stay on the CPU where they are made)."""
    frames = [frame for frame in traceback.extract_stack() if not frame.filename.endswith("syncs.py")]
    outside_torch = [frame for frame in frames if "/torch/" not in frame.filename]
    return bool(outside_torch) and "/lib/python" not in outside_torch[-1].filename


def _has_mask(args: tuple) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ())


@contextmanager
def count_host_syncs(monkeypatch: pytest.MonkeyPatch) -> Iterator[HostSyncs]:
    """Counts host syncs while the returned record is `active` (the caller switches it)."""
    syncs = HostSyncs()

    def watched(name: str) -> Any:
        original = getattr(torch.Tensor, name)

        def method(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            syncs.record(f"Tensor.{name}")
            return original(self, *args, **kwargs)

        return method

    for name in ("tolist", "numpy", "__array__", "cpu"):
        monkeypatch.setattr(torch.Tensor, name, watched(name))
    with _Dispatch(syncs):
        yield syncs


def assert_model_waits_for_nothing(
    monkeypatch: pytest.MonkeyPatch, model: Any, batch: Any, nll_samples: int = 0, *more: Callable[[], Any]
) -> None:
    """A training step (the loss and its backward), the evaluation terms, the anomaly score, the NLL from
    `nll_samples` importance samples in chunks of 16 (where given) and each of `more`, counted on the CPU:
    none waits for the device."""
    with count_host_syncs(monkeypatch) as syncs:
        syncs.active = True
        model.train().loss_terms(batch)["loss"].mean().backward()
        model.eval().loss_terms(batch)
        model.anomaly_score(batch)
        if nll_samples:
            model.negative_log_likelihood(batch, nll_samples, chunk_size=16)
        for call in more:
            call()
        syncs.active = False
    assert syncs.found == []


class WatchSteps(Callback):
    """Switches a `HostSyncs` record on over the training steps after the first `skip_calls` calls (the data
    fetching between them included) and the validation and test batches, off at each epoch's end and while a
    validation or test epoch starts or ends (the conversions allowed there). Put it first in the callbacks, so
    that it switches on before the others' batch hooks; `Last` goes last, so their end hooks are counted."""

    def __init__(self, syncs: HostSyncs, skip_calls: int = 1) -> None:
        self.syncs = syncs
        self.skip_calls = skip_calls
        self.calls = 0
        self.stages: dict[str, list[str]] = {"train": [], "val": [], "test": []}

    def _start(self, stage: str) -> None:
        self.stage = stage
        self.before = len(self.syncs.found)
        self.syncs.active = True

    def _stop(self) -> None:
        if self.syncs.active:
            self.stages[self.stage] += self.syncs.found[self.before :]
        self.syncs.active = False

    def on_train_batch_start(self, *args: Any) -> None:
        self.calls += 1
        if self.calls > self.skip_calls and not self.syncs.active:
            self._start("train")

    def on_validation_batch_start(self, *args: Any) -> None:
        self._start("val")

    def on_test_batch_start(self, *args: Any) -> None:
        self._start("test")

    def stop(self, *args: Any) -> None:
        self._stop()

    on_train_epoch_end = on_validation_start = on_test_start = stop

    class Last(Callback):
        """Ends the validation and test windows after every callback's batch-end hook."""

        def __init__(self, watch: "WatchSteps") -> None:
            self.watch = watch

        def on_validation_batch_end(self, *args: Any) -> None:
            self.watch.stop()

        on_test_batch_end = on_validation_batch_end
