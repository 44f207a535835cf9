"""Runs that go wrong end cleanly: a loss that becomes NaN stops the run in one line without a checkpoint of
broken weights, and a full disk or a read-only run folder is one line with no partial file left."""

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ae_lightning.checkpoints import read_checkpoint
from ae_lightning.cli import main
from ae_lightning.files import atomic_write
from tests.conftest import CONFIGS, REPO, run_folder, tiny
from tests.test_scaling import DDP, PRECISIONS, cli

AE = str(CONFIGS / "ae.yaml")
#: from epoch 1 on, a learning rate of 1e10: the weights overflow to inf and NaN within a step or two
BLOW_UP_IN_EPOCH_1 = "--model.lr_scheduler=" + json.dumps(
    {"class_path": "torch.optim.lr_scheduler.MultiStepLR", "init_args": {"milestones": [1], "gamma": 1e13}}
)


def checkpoints(root: Path) -> list[str]:
    return sorted(path.name for path in (run_folder(root, "ae") / "checkpoints").glob("*.ckpt"))


@pytest.mark.parametrize("precision", ["32", "fp16"])
@pytest.mark.parametrize("steps_per_call", [1, 4])
def test_a_nan_loss_stops_the_run_in_one_line_and_keeps_the_last_good_checkpoint(
    steps_per_call: int, precision: str, data_dir: Path, in_tmp: Path
) -> None:
    """Epoch 0 trains well and is saved; in epoch 1 the weights blow up: the run stops within the logging
    interval (1 step here) naming the step, writes no checkpoint of epoch 1 (none named val_loss=nan),
    and last.ckpt still holds epoch 0's finite weights. With 16-mixed's GradScaler too, which skips the
    steps whose gradients overflow but not weights that a huge learning rate broke."""
    args = ["fit", "--config", AE, *tiny(data_dir), "--trainer.max_epochs=3", BLOW_UP_IN_EPOCH_1,
            f"--model.steps_per_call={steps_per_call}", *PRECISIONS[precision]]  # fmt: skip
    with pytest.raises(SystemExit) as error:
        main(args)
    message = str(error.value.code)
    # epoch 0 is steps 1-5; step 6 (the first at lr 1e10) starts from good weights, so its loss is finite
    # and step 7's is not; with K = 4 the call of steps 6-9 is the first with a non-finite loss
    step = 7 if steps_per_call == 1 else 9
    assert message.startswith(
        f"error: the training loss or the weights became NaN or infinite by step {step} (epoch 1): training "
        f"stopped, the checkpoints from before it are kept in {Path('runs/ae/version_0/checkpoints')}."
    ), message
    assert "\n" not in message and "--nonfinite_loss.stop false" in message
    names = checkpoints(in_tmp)
    assert len(names) == 2 and names[0].startswith("epoch=0-step=5-val_loss=") and names[1] == "last.ckpt"
    last = read_checkpoint(run_folder(in_tmp, "ae") / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 5
    assert all(torch.isfinite(weight).all() for weight in last["state_dict"].values())


def test_nonfinite_loss_stop_false_trains_on_with_one_warning(data_dir: Path, in_tmp: Path) -> None:
    with pytest.warns(UserWarning, match="became NaN or infinite by step 2 \\(training goes on") as warned:
        fitted = main(["fit", "--config", AE, *tiny(data_dir), "--trainer.max_epochs=2",
                       "--model.optimizer.init_args.lr=1e10", "--nonfinite_loss.stop=false"])  # fmt: skip
    assert sum("NaN or infinite" in str(w.message) for w in warned) == 1
    assert fitted.trainer.global_step == 10
    assert any("val_loss=nan" in name for name in checkpoints(in_tmp))  # what the user chose


@pytest.mark.slow
def test_a_nan_loss_stops_every_ddp_rank(data_dir: Path, tmp_path: Path) -> None:
    """Two processes, the loss NaN from the first steps: both stop at the same check (no rank left waiting),
    the command fails with the one-line error and writes no checkpoint."""
    result = cli(
        ["fit", "--config", AE, "--config", DDP, *tiny(data_dir), "--trainer.devices=2",
         "--trainer.max_epochs=3", "--model.optimizer.init_args.lr=1e10"],
        cwd=tmp_path, timeout=180,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors and all("became NaN or infinite by step 2 (epoch 0)" in line for line in errors), errors
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.rglob("*.ckpt"))


def in_small_disk(tmp_path: Path, command: str, size: str = "10m", read_only: bool = False) -> str:
    """Runs the shell `command` where `tmp_path/disk` is a tmpfs of `size` (read-only if asked): a real full
    disk or read-only folder, in a mount namespace of its own (`unshare`), so nothing is mounted for the
    rest of the machine. Returns what it printed."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"]).returncode != 0:
        pytest.skip("needs `unshare -rm` (util-linux, user namespaces) for a tmpfs of its own")
    disk = tmp_path / "disk"
    disk.mkdir()
    remount = f"&& mount -o remount,ro {disk} " if read_only else ""
    script = f"mount -t tmpfs -o size={size} tmpfs {disk} {remount}&& {command}"
    result = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    return result.stdout + result.stderr


#: lists every file under the disk, and whether each checkpoint reads whole
LIST_FILES = """
import json, sys
from pathlib import Path
from ae_lightning.checkpoints import read_checkpoint
files = sorted(str(p.relative_to(sys.argv[1])) for p in Path(sys.argv[1]).rglob("*") if p.is_file())
for name in files:
    if name.endswith(".ckpt"):
        read_checkpoint(Path(sys.argv[1]) / name)
print("FILES " + json.dumps(files))
"""


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_leaves_no_partial_checkpoint(data_dir: Path, tmp_path: Path) -> None:
    """A disk with room for the first checkpoint but not for the second: the run stops with one line naming
    the file and folder; every checkpoint left there reads whole, and no temporary file is left."""
    (tmp_path / "list.py").write_text(LIST_FILES)
    fit = shlex.join(
        [sys.executable, str(REPO / "cli.py"), "fit", "--config", AE, *tiny(data_dir),
         "--trainer.max_epochs=2", "--model.hidden_dims=[32]",
         f"--trainer.logger.init_args.save_dir={tmp_path / 'disk'}"]
    )  # fmt: skip
    listing = shlex.join([sys.executable, str(tmp_path / "list.py"), str(tmp_path / "disk")])
    # room for config, log, the best checkpoint of epoch 0 (650 KB) and its grid, not for last.ckpt
    output = in_small_disk(tmp_path, f"{fit}; echo RC=$?; {listing}", size="700k")
    assert "RC=1" in output and "Traceback" not in output, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: cannot write "), output[-3000:]
    assert "the disk is full; make room there or write the run elsewhere" in errors[0]
    files = json.loads(next(line for line in output.splitlines() if line.startswith("FILES "))[6:])
    assert "ae/version_0/config.yaml" in files
    assert not [name for name in files if name.endswith(".tmp")]  # no temporary file left behind
    assert [name for name in files if name.endswith(".ckpt")] == [
        name
        for name in files
        if name.endswith(".ckpt") and name.startswith("ae/version_0/checkpoints/epoch=0")
    ]


@pytest.mark.slow
def test_a_read_only_run_folder_is_one_line_before_anything_runs(data_dir: Path, tmp_path: Path) -> None:
    fit = shlex.join(
        [sys.executable, str(REPO / "cli.py"), "fit", "--config", AE, *tiny(data_dir),
         f"--trainer.logger.init_args.save_dir={tmp_path / 'disk'}"]
    )  # fmt: skip
    output = in_small_disk(tmp_path, f"{fit}; echo RC=$?", read_only=True)
    assert "RC=1" in output and "Traceback" not in output, output[-3000:]
    assert [line for line in output.splitlines() if line.startswith("error: ")] == [
        f"error: cannot write ae into {tmp_path / 'disk'}: the file system is read-only; write the run "
        "elsewhere (--trainer.logger.init_args.save_dir) or make the folder writable (no checkpoint or "
        "picture is left partial)"
    ]


def test_atomic_write_keeps_the_old_file_when_a_write_fails(tmp_path: Path) -> None:
    path = tmp_path / "grid.png"
    path.write_bytes(b"old picture")
    with pytest.raises(KeyboardInterrupt), atomic_write(path) as file:  # a kill arriving mid-write
        file.write(b"half of a new pic")
        raise KeyboardInterrupt
    assert path.read_bytes() == b"old picture" and os.listdir(tmp_path) == ["grid.png"]
    with atomic_write(path) as file:
        file.write(b"new picture")
    assert path.read_bytes() == b"new picture" and os.listdir(tmp_path) == ["grid.png"]


@pytest.mark.slow
def test_fits_started_at_once_take_a_run_folder_each(data_dir: Path, tmp_path: Path) -> None:
    """Three `fit`s of the same config started together: each takes its own version_<n> (a folder is taken
    with one mkdir), none fails."""
    args = ["fit", "--config", AE, *tiny(data_dir)]
    procs = [
        subprocess.Popen([sys.executable, str(REPO / "cli.py"), *args], cwd=tmp_path, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        for _ in range(3)
    ]  # fmt: skip
    outputs = [proc.communicate(timeout=300) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], [err[-2000:] for _, err in outputs]
    runs = sorted(p.name for p in (tmp_path / "runs" / "ae").iterdir())
    assert runs == ["version_0", "version_1", "version_2"]
    for run in runs:
        folder = tmp_path / "runs" / "ae" / run
        assert (folder / "config.yaml").is_file() and (folder / "checkpoints" / "last.ckpt").is_file()
        assert len(list(folder.glob("events.out.tfevents.*"))) == 1  # one run's log each
