"""What a first GPU run would hit, proven where a CPU can prove it: one device unless asked, the matmul
precision option, an out-of-memory error in one line, pinned batches only for a GPU, predict on the device.
(That no training, validation or test step waits for the device: tests/test_speed.py.)"""

from pathlib import Path

import pytest
import torch
from torch.utils.data._utils.pin_memory import pin_memory

from ae_lightning.batch import Batch
from ae_lightning.cli import main
from ae_lightning.data import MNISTDataModule
from ae_lightning.data.datasets import BatchReads
from tests.conftest import CONFIGS, VAL_SIZE, run_and_fail, run_folder, tiny, tiny_for
from tests.test_scaling import DDP, FakeTrainer

VAE = str(CONFIGS / "vae.yaml")


@pytest.mark.slow  # whole runs through the CLI: in the slow set (CI runs it), to keep the quick one quick
def test_a_plain_fit_uses_one_device_and_ddp_yaml_every_one(data_dir: Path, in_tmp: Path) -> None:
    """On an 8-GPU node `fit --config X` trains on one GPU, with the batch size the config says, whatever X;
    the DDP fragment asks for every device of the node (`auto`), `--trainer.devices N` for N."""
    for path in sorted(CONFIGS.glob("*.yaml")):
        cli = main(["--config", str(path), *tiny_for(path, data_dir)], run=False)
        assert cli.config.trainer.devices == 1, path.name
        assert cli.trainer.num_devices == 1
    ddp = main(["--config", VAE, "--config", DDP, *tiny(data_dir)], run=False)
    assert ddp.config.trainer.devices == "auto"


def test_the_float32_matmul_precision_is_an_option_that_defaults_to_torchs(
    data_dir: Path, in_tmp: Path
) -> None:
    try:
        main(["--config", VAE, *tiny(data_dir), "--float32_matmul_precision=high"], run=False)
        assert torch.get_float32_matmul_precision() == "high"
        main(["--config", VAE, *tiny(data_dir)], run=False)  # the next command in the process: the default
        assert torch.get_float32_matmul_precision() == "highest"
    finally:
        torch.set_float32_matmul_precision("highest")


def test_out_of_device_memory_is_one_line_saying_what_to_lower(
    data_dir: Path, in_tmp: Path, capsys: pytest.CaptureFixture
) -> None:
    oom = '--trainer.callbacks+={"class_path": "tests.callbacks.RunOutOfMemory"}'
    line = run_and_fail(["fit", "--config", VAE, *tiny(data_dir), oom], capsys)
    assert line.startswith("error: out of memory (CUDA out of memory. Tried to allocate 12.00 GiB): lower ")
    assert "--data.batch_size" in line and "--data.resident false" in line
    assert not (in_tmp / "runs").exists()  # failed before its first step: nothing left behind


def test_a_batch_pins_every_tensor_it_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    """A DataLoader with pin_memory calls `Batch.pin_memory` (torch hands back an object it cannot pin
    unpinned); every tensor field is pinned, None stays None. (Pinning needs CUDA: faked here.)"""
    pinned = []

    def fake_pin(self: torch.Tensor, *args: object) -> torch.Tensor:
        copy = self.clone()
        pinned.append(copy)
        return copy

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    batch = Batch(torch.rand(2, 1, 4, 4), labels=torch.tensor([1, 2]), index=torch.tensor([0, 1]))
    result = pin_memory(batch)
    assert isinstance(result, Batch) and result.gt_anomaly is None
    assert [id(t) for t in (result.inputs, result.labels, result.index)] == [id(t) for t in pinned]
    assert torch.equal(result.inputs, batch.inputs)


@pytest.mark.parametrize("device, pinned", [("cpu", False), ("cuda", True)])
def test_the_dataloader_path_pins_batches_only_for_a_gpu_run(
    data_dir: Path, device: str, pinned: bool
) -> None:
    """Pinning is for copies to a GPU: a CPU run pins nothing (and so starts no CUDA), even on a GPU host."""
    datamodule = MNISTDataModule(data_dir=data_dir, val_size=VAL_SIZE, batch_size=16, resident=False)
    trainer = FakeTrainer(1, 0)
    trainer.strategy.root_device = torch.device(device)
    datamodule.trainer = trainer
    datamodule.setup("fit")
    loaders = (datamodule.train_dataloader(), datamodule.val_dataloader(), datamodule.predict_dataloader())
    assert [loader.pin_memory for loader in loaders] == [pinned] * 3


def test_predict_on_resident_data_reads_whole_batches_and_equals_the_dataloader_path(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resident data is predicted a batch at a time on its device (no per-image reads, no worker
    processes): the same predictions, in the same order, as the DataLoader path."""
    datamodule = MNISTDataModule(data_dir=data_dir, val_size=VAL_SIZE, batch_size=16, num_workers=2)
    datamodule.setup("predict")
    loader = datamodule.predict_dataloader()
    assert isinstance(loader.dataset, BatchReads) and loader.num_workers == 0
    first = next(iter(loader))
    assert first.inputs.shape == (16, 1, 28, 28) and first.index.tolist() == list(range(16))

    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", VAE, *tiny(data_dir)])
    ckpt = str(run_folder(tmp_path, "vae") / "checkpoints" / "last.ckpt")
    predictions = []
    for version, resident in ((1, "true"), (2, "false")):
        main(["predict", "--config", VAE, *tiny(data_dir), f"--data.resident={resident}",
              f"--ckpt_path={ckpt}"])  # fmt: skip
        predictions.append(torch.load(run_folder(tmp_path, "vae", version) / "predictions.pt"))
    assert predictions[0].keys() == predictions[1].keys()
    for name in predictions[0]:
        torch.testing.assert_close(predictions[0][name], predictions[1][name], rtol=0, atol=1e-6, msg=name)
    assert predictions[0]["index"].tolist() == list(range(40))


def test_the_room_check_counts_the_copy_of_every_process_of_the_machine(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resident in the main memory, every DDP process of a machine keeps its own copy: memory for 1 but not
    2 copies keeps 1 process resident, and sends 2 processes (of one machine, not of two) to the DataLoader
    path with a warning."""
    import ae_lightning.data.contract as contract

    def resident(world_size: int, num_nodes: int) -> bool:
        datamodule = MNISTDataModule(data_dir=data_dir, val_size=VAL_SIZE, batch_size=16)
        datamodule.trainer = FakeTrainer(world_size, 0, num_nodes)
        datamodule.setup("fit")
        return datamodule.resident

    size = (96 + 40) * 28 * 28 + (96 + 40) * 8  # uint8 images and int64 labels
    monkeypatch.setattr(contract, "free_memory", lambda device: 3 * size)  # room for 1.5 copies (2x each)
    assert resident(1, 1) and resident(2, 2)
    with pytest.warns(UserWarning, match=r"MB x 2 processes\) does not fit beside the model on cpu"):
        assert not resident(2, 1)


def test_memory_mapped_rows_go_to_a_device_a_chunk_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    import ae_lightning.data.datasets as datasets

    monkeypatch.setattr(datasets, "GATHER_BYTES", 3 * 16)  # 3 images of 1x4x4 per chunk
    images = torch.arange(10 * 16, dtype=torch.uint8).view(10, 1, 4, 4)
    rows = torch.tensor([9, 2, 2, 5, 0, 7, 1])
    assert torch.equal(datasets.gather_rows(images, rows, "cpu"), images[rows])


@pytest.mark.slow
def test_the_device_check_runs_its_cpu_part(tmp_path: Path) -> None:
    """benchmarks/device_check.py, the first GPU session's script, on a CPU: the checks a CPU can run pass,
    the others say why they were skipped; the JSON report is complete."""
    import json
    import subprocess
    import sys

    from tests.conftest import REPO

    out = tmp_path / "device_check.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "device_check.py"), f"--out={out}", "--accelerator=cpu"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    checks = json.loads(out.read_text())["checks"]
    statuses = {name: result["status"] for name, result in checks.items()}
    assert statuses == {
        "syncs": "skip", "precision": "pass", "resume": "pass", "device_moves": "skip", "parity": "pass",
        "epoch_speed": "pass", "other_data": "pass", "ddp_equals_one_device": "skip", "ddp_resume": "skip",
        "ddp_faults": "skip",
    }  # fmt: skip
    assert checks["syncs"]["why"] == "needs 1 GPU(s), this machine has 0"
    assert checks["resume"]["largest_weight_difference"] == {"K=1": 0.0, "K=4": 0.0}
    assert len(checks["epoch_speed"]["rows"]) == 4  # the four pipelines
