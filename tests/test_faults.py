"""Runs that go wrong end cleanly: a loss that becomes NaN stops the run in one line without a checkpoint of
broken weights, and a full disk or a read-only run folder is one line with no partial file left."""

import json
from pathlib import Path

import pytest
import torch

from ae_lightning.checkpoints import read_checkpoint
from ae_lightning.cli import main
from tests.conftest import CONFIGS, run_folder, tiny
from tests.test_scaling import DDP, cli

AE = str(CONFIGS / "ae.yaml")
#: from epoch 1 on, a learning rate of 1e10: the weights overflow to inf and NaN within a step or two
BLOW_UP_IN_EPOCH_1 = "--model.lr_scheduler=" + json.dumps(
    {"class_path": "torch.optim.lr_scheduler.MultiStepLR", "init_args": {"milestones": [1], "gamma": 1e13}}
)


def checkpoints(root: Path) -> list[str]:
    return sorted(path.name for path in (run_folder(root, "ae") / "checkpoints").glob("*.ckpt"))


@pytest.mark.parametrize("steps_per_call", [1, 4])
def test_a_nan_loss_stops_the_run_in_one_line_and_keeps_the_last_good_checkpoint(
    steps_per_call: int, data_dir: Path, in_tmp: Path
) -> None:
    """Epoch 0 trains well and is saved; in epoch 1 the weights blow up: the run stops within the logging
    interval (1 step here) naming the step, writes no checkpoint of epoch 1 (none named val_loss=nan),
    and last.ckpt still holds epoch 0's finite weights."""
    args = ["fit", "--config", AE, *tiny(data_dir), "--trainer.max_epochs=3", BLOW_UP_IN_EPOCH_1,
            f"--model.steps_per_call={steps_per_call}"]  # fmt: skip
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
