"""Checkpoints from elsewhere are never run and never trusted whole: a file that would execute code when
unpickled, or whose bytes changed after it was written, is refused with one line at every entry point."""

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ae_lightning.checkpoints import SafeCheckpointIO, read_checkpoint
from ae_lightning.cli import main
from ae_lightning.errors import CheckpointError, WriteError
from ae_lightning.models import AE
from tests.conftest import CONFIGS, REPO, run_folder, tiny

AE_CONFIG = str(CONFIGS / "ae.yaml")


class Marker:
    """Unpickling it creates the file `path`: what an attacker's checkpoint would do, made visible."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def malicious_checkpoint(path: Path, marker: Path) -> Path:
    """A file that looks like a Lightning checkpoint and creates `marker` when unpickled with
    `weights_only=False`."""
    torch.save({"state_dict": {}, "epoch": 0, "global_step": 0, "payload": Marker(marker)}, path)
    return path


def flipped(good: Path, path: Path, count: int = 100) -> Path:
    """A copy of `good` with `count` bytes flipped inside the tensor data: the zip still opens."""
    data = bytearray(good.read_bytes())
    for i in random.Random(0).sample(range(2000, len(data) - 2000), count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


@pytest.fixture(scope="module")
def fitted_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of a tiny AE run (tests copy its files, never change them)."""
    root = tmp_path_factory.mktemp("fitted")
    main(["fit", "--config", AE_CONFIG, *tiny(data_dir), f"--trainer.logger.init_args.save_dir={root}"])
    return root / "ae" / "version_0"


def test_read_checkpoint_never_unpickles_code(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    bad = malicious_checkpoint(tmp_path / "x.ckpt", marker)
    with pytest.raises(CheckpointError, match=r"holds objects other than tensors and plain data \(io.open\)"):
        read_checkpoint(bad)
    with pytest.raises(CheckpointError):
        SafeCheckpointIO().load_checkpoint(bad)
    with pytest.raises(CheckpointError):
        AE.load_from_checkpoint(bad)
    assert not marker.exists()
    # the same object, read the unsafe way, does run: the test's marker works
    torch.load(bad, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize(
    "args",
    [
        ["fit", "--ckpt_path", "{bad}"],
        ["validate", "--ckpt_path", "{bad}"],
        ["test", "--ckpt_path", "{bad}"],
        ["predict", "--ckpt_path", "{bad}"],
        ["fit", "--ckpt_path", "last"],
        ["test", "--ckpt_path", "last"],
        ["predict", "--ckpt_path", "last"],
    ],
    ids=lambda args: " ".join(args[:1] + args[2:]).replace("{bad}", "x.ckpt"),
)
def test_a_malicious_checkpoint_is_refused_at_every_entry_point_and_never_runs(
    args: list[str], data_dir: Path, in_tmp: Path
) -> None:
    marker = in_tmp / "marker"
    bad = malicious_checkpoint(in_tmp / "x.ckpt", marker)
    if "last" in args:  # the run's own last.ckpt was replaced by the crafted file
        last = run_folder(in_tmp, "ae") / "checkpoints" / "last.ckpt"
        last.parent.mkdir(parents=True)
        malicious_checkpoint(last, marker)
    command, *rest = (arg.replace("{bad}", str(bad)) for arg in args)
    with pytest.raises(SystemExit) as error:
        main([command, "--config", AE_CONFIG, *tiny(data_dir), *rest])
    message = str(error.value.code)
    assert message.startswith("error: --ckpt_path ") and "\n" not in message
    assert "holds objects other than tensors and plain data" in message
    assert not marker.exists()


def test_a_malicious_hpc_checkpoint_found_by_lightning_on_slurm_is_refused(
    data_dir: Path, in_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A requeued SLURM job resumes from the newest `hpc_ckpt_<n>.ckpt` Lightning finds itself: that file
    is read through SafeCheckpointIO too."""
    slurm = {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "ae", "SLURM_JOB_ID": "7", "SLURM_PROCID": "0",
             "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NTASKS_PER_NODE": "1"}  # fmt: skip
    for name, value in slurm.items():
        monkeypatch.setenv(name, value)
    marker = in_tmp / "marker"
    (in_tmp / "hpc").mkdir()
    malicious_checkpoint(in_tmp / "hpc" / "hpc_ckpt_1.ckpt", marker)
    with pytest.raises(SystemExit) as error:
        main(["fit", "--config", AE_CONFIG, *tiny(data_dir), f"--trainer.default_root_dir={in_tmp / 'hpc'}"])
    assert "hpc_ckpt_1.ckpt holds objects other than tensors" in str(error.value.code)
    assert not marker.exists()


def test_the_real_command_refuses_a_malicious_checkpoint_in_one_line(data_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    bad = malicious_checkpoint(tmp_path / "x.ckpt", marker)
    result = subprocess.run(
        [sys.executable, str(REPO / "cli.py"), "test", "--config", AE_CONFIG, *tiny(data_dir),
         "--ckpt_path", str(bad)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: --ckpt_path {bad} holds objects other than tensors and plain data (io.open), which "
        "could run code when read: ae_lightning did not write it and will not read it; use a run's checkpoint"
    ]
    assert not marker.exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("subcommand", ["fit", "test"])
@pytest.mark.parametrize("how", ["flipped", "truncated"])
def test_a_damaged_last_checkpoint_is_refused_before_anything_runs(
    subcommand: str, how: str, fitted_run: Path, data_dir: Path, in_tmp: Path
) -> None:
    """100 flipped bytes (the zip still opens; only its checksums tell) or a cut file, as the run's
    last.ckpt, with `--ckpt_path last`: one line naming the file; nothing trained, the file left alone."""
    good = fitted_run / "checkpoints" / "last.ckpt"
    last = run_folder(in_tmp, "ae") / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    if how == "flipped":
        flipped(good, last)
    else:
        last.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    damaged = last.read_bytes()
    with pytest.raises(SystemExit) as error:
        main([subcommand, "--config", AE_CONFIG, *tiny(data_dir), "--ckpt_path", "last"])
    message = str(error.value.code)
    assert message.startswith(f"error: --ckpt_path last ({last.relative_to(in_tmp)})") and "\n" not in message
    expected = "does not match its checksum" if how == "flipped" else "not the zip archive torch.save writes"
    assert expected in message
    assert last.read_bytes() == damaged
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]


def test_flipped_bytes_are_refused_by_load_from_checkpoint(fitted_run: Path, tmp_path: Path) -> None:
    bad = flipped(fitted_run / "checkpoints" / "last.ckpt", tmp_path / "flipped.ckpt")
    with pytest.raises(CheckpointError, match="does not match its checksum"):
        AE.load_from_checkpoint(bad)
    assert isinstance(AE.load_from_checkpoint(fitted_run / "checkpoints" / "last.ckpt"), AE)


def test_resume_past_max_epochs_is_one_line(fitted_run: Path, data_dir: Path, in_tmp: Path) -> None:
    ckpt = in_tmp / "epoch1.ckpt"
    checkpoint = read_checkpoint(fitted_run / "checkpoints" / "last.ckpt")
    torch.save({**checkpoint, "epoch": 3}, ckpt)
    with pytest.raises(SystemExit) as error:
        main(
            [
                "fit",
                "--config",
                AE_CONFIG,
                *tiny(data_dir),
                "--trainer.max_epochs=2",
                "--ckpt_path",
                str(ckpt),
            ]
        )
    assert str(error.value.code) == (
        f"error: --ckpt_path {ckpt} was saved in epoch 3 (counting from 0), past --trainer.max_epochs 2: "
        "give a larger --trainer.max_epochs (the total number of epochs, the checkpoint's included)"
    )
    assert not (in_tmp / "runs").exists()


def test_checkpoints_are_written_whole_or_not_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A save that fails half-way (here: torch.save raising after writing part of the file) leaves the old
    checkpoint as it was and no other file."""
    io = SafeCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)
    before = path.read_bytes()

    def fail_half_way(obj: object, file) -> None:
        file.write(b"PK\x03\x04 partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", fail_half_way)
    with pytest.raises(WriteError) as error:
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, path)
    assert str(error.value) == (
        f"cannot write last.ckpt into {tmp_path}: the disk is full; make room there or write the run "
        "elsewhere (--trainer.logger.init_args.save_dir) (no checkpoint or picture is left partial)"
    )
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["last.ckpt"]


def test_a_checkpoint_the_cli_checked_is_not_read_again_unless_it_changed(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, path)
    checked = read_checkpoint(path)
    io = SafeCheckpointIO(checked=(path, checked))
    assert io.load_checkpoint(path) is checked  # handed over once, without a second read
    assert io.load_checkpoint(path) is not checked  # later loads read the file

    io = SafeCheckpointIO(checked=(path, checked))
    torch.save({"state_dict": {"w": torch.zeros(3)}}, path)  # changed after the check
    assert torch.equal(io.load_checkpoint(path)["state_dict"]["w"], torch.zeros(3))
