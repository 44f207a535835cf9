"""Models that train with several optimizers (`autoencoders.SeveralOptimizers`): the battery of the single
optimizer's path, on `tests.split_models.SplitAE` (the AE with its encoder and decoder stepped by two
optimizers on the same loss), whose answer is known: stepped every iteration it trains as the AE does. K = 4,
resume, bf16 and DDP run in the full suite only (the default run keeps under its 5 minutes)."""

import csv
import json
from pathlib import Path

import pytest
import torch

from ae_lightning import autoencoders
from ae_lightning.autoencoders import OptimizedPart, take_part_gradients
from ae_lightning.batch import Batch
from ae_lightning.checkpoints import read_checkpoint
from ae_lightning.cli import main
from tests.conftest import CONFIGS, run_folder, tiny
from tests.split_models import SplitAE, SplitAutoencoder
from tests.test_scaling import DDP, FP16, SGD, TRAIN_SIZE, assert_same_weights, cli

AE = str(CONFIGS / "ae.yaml")
SPLIT = "--model=tests.split_models.SplitAE"
#: the decoder's learning rate halves every epoch, the encoder's stays: schedulers per optimizer
DECODER_STEP_LR = "--model.lr_schedulers=" + json.dumps(
    {
        "decoder": {
            "class_path": "torch.optim.lr_scheduler.StepLR",
            "init_args": {"step_size": 1, "gamma": 0.5},
        }
    }
)


def fit(folder: Path, monkeypatch: pytest.MonkeyPatch, *args: str):
    folder.mkdir(exist_ok=True)
    monkeypatch.chdir(folder)
    return main(["fit", "--config", AE, *args])


def weights(run) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in run.model.model.state_dict().items()}


def assert_equal(first: dict, second: dict, atol: float = 0.0) -> None:
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=0, atol=atol, msg=name)


def test_a_plain_loop_with_two_optimizers_takes_the_one_optimizers_steps() -> None:
    """`take_part_gradients` in a plain loop: each part's gradient reaches only its parameters, and two SGD
    optimizers on the same loss take the steps of one."""
    images = torch.rand(8, 1, 28, 28)
    models = []
    for cls in (autoencoders.AE, SplitAutoencoder):
        torch.manual_seed(0)
        models.append(cls(latent_dim=4, hidden_dims=[16]))
    single, split = models
    parts = split.checked_parts()
    optimizers = {part.name: torch.optim.SGD(part.parameters, lr=0.1) for part in parts}
    one = torch.optim.SGD(single.parameters(), lr=0.1)
    for iteration in range(5):
        one.zero_grad()
        single.loss_terms(Batch(images))["loss"].mean().backward()
        one.step()
        stepped = take_part_gradients(split.loss_terms(Batch(images)), parts, iteration)
        assert [part.name for part in stepped] == ["encoder", "decoder"]
        for part in stepped:
            optimizers[part.name].step()
    assert_equal(single.state_dict(), split.state_dict(), atol=1e-6)

    # only the part's own parameters get a gradient; a part not due keeps what it had
    split.zero_grad(set_to_none=True)
    half = SplitAutoencoder(latent_dim=4, hidden_dims=[16], decoder_every=2)
    half.zero_grad(set_to_none=True)
    stepped = take_part_gradients(half.loss_terms(Batch(images)), half.checked_parts(), iteration=1)
    assert [part.name for part in stepped] == ["encoder"]
    assert all(p.grad is not None for p in half.encoder.parameters())
    assert all(p.grad is None for p in half.decoder.parameters())


def test_parts_that_overlap_leave_parameters_out_or_never_all_step_are_refused() -> None:
    model = SplitAutoencoder(latent_dim=4, hidden_dims=[16])
    encoder, decoder = (tuple(net.parameters()) for net in (model.encoder, model.decoder))
    cases = {
        "left out": (OptimizedPart("encoder", encoder, "loss"),),
        "overlap": (OptimizedPart("a", encoder, "loss"), OptimizedPart("b", encoder + decoder, "loss")),
        "same names": (OptimizedPart("a", encoder, "loss"), OptimizedPart("a", decoder, "loss")),
        "none every step": (OptimizedPart("a", encoder, "loss", 2), OptimizedPart("b", decoder, "loss", 3)),
    }
    for what, parts in cases.items():
        model.optimized_parts = lambda parts=parts: parts
        with pytest.raises(ValueError, match="SplitAutoencoder"):
            model.checked_parts()
        print(what, "refused")


@pytest.mark.parametrize("steps_per_call", [1, pytest.param(4, marks=pytest.mark.slow)])
def test_two_optimizers_train_as_one_through_the_trainer_with_k_steps_per_call(
    steps_per_call: int, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """2 epochs (5 batches each) of SplitAE with K = 1 or 4 and SGD take the AE's steps: the same weights,
    `global_step` 10 (iterations, not the 20 optimizer steps Lightning would count), the same checkpoint
    names; train/loss reaches the loggers, keyed by iteration."""
    logger = '{"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "csv"}}'
    flags = [
        *tiny(data_dir),
        *SGD,
        "--trainer.max_epochs=2",
        "--trainer.log_every_n_steps=2",
        f"--trainer.logger={logger}",
    ]
    one = fit(tmp_path / "one", monkeypatch, *flags)
    split = fit(tmp_path / "split", monkeypatch, *flags, SPLIT, f"--model.steps_per_call={steps_per_call}")
    assert isinstance(split.model, SplitAE) and not split.model.automatic_optimization
    assert split.trainer.global_step == one.trainer.global_step == 10
    assert_equal(weights(one), weights(split), atol=1e-6)
    names = [
        sorted(p.name for p in (tmp_path / n).glob("csv/*/version_0/checkpoints/*")) for n in ("one", "split")
    ]
    assert names[0][0].split("-val_loss")[0] == names[1][0].split("-val_loss")[0] == "epoch=0-step=5"
    (metrics,) = (tmp_path / "split" / "csv").glob("*/version_0/metrics.csv")
    with open(metrics) as file:
        rows = list(csv.DictReader(file))
    logged = [int(row["step"]) for row in rows if row["train/loss"]]
    assert logged == ([1, 3, 5, 7, 9] if steps_per_call == 1 else [3, 8, 9])


@pytest.mark.slow
def test_a_part_stepping_every_other_iteration_resumes_exactly_with_a_scheduler_per_optimizer(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Adam, the decoder stepping at every other iteration and its learning rate halved each epoch: K = 4
    equals K = 1, and 2 epochs equal 1 epoch, then `--ckpt_path last`, then 1, to the bit (both optimizers'
    and the scheduler's states are in the checkpoint)."""
    flags = [
        *tiny(data_dir),
        SPLIT,
        "--model.decoder_every=2",
        DECODER_STEP_LR,
        "--trainer.deterministic=true",
    ]
    unbroken = fit(tmp_path / "unbroken", monkeypatch, *flags, "--trainer.max_epochs=2")
    k4 = fit(tmp_path / "k4", monkeypatch, *flags, "--trainer.max_epochs=2", "--model.steps_per_call=4")
    fit(tmp_path / "resumed", monkeypatch, *flags, "--trainer.max_epochs=1")
    resumed = fit(tmp_path / "resumed", monkeypatch, *flags, "--trainer.max_epochs=2", "--ckpt_path=last")
    assert resumed.trainer.global_step == unbroken.trainer.global_step == 10
    assert_equal(weights(unbroken), weights(resumed))
    assert_equal(weights(unbroken), weights(k4), atol=1e-6)
    encoder_lr, decoder_lr = (o.param_groups[0]["lr"] for o in resumed.trainer.optimizers)
    assert (encoder_lr, decoder_lr) == (1e-3, 0.25e-3)
    last = read_checkpoint(run_folder(tmp_path / "resumed", "ae") / "checkpoints" / "last.ckpt")
    assert len(last["optimizer_states"]) == 2 and len(last["lr_schedulers"]) == 1
    # the decoder stepped at iterations 0, 2, ..., 8: 5 of 10
    decoder_state = last["optimizer_states"][1]["state"]
    assert {int(state["step"]) for state in decoder_state.values()} == {5}

    reloaded = SplitAE.load_from_checkpoint(
        run_folder(tmp_path / "resumed", "ae") / "checkpoints" / "last.ckpt"
    )
    assert_equal(weights(unbroken), {n: t for n, t in reloaded.model.state_dict().items()})


def test_a_nan_in_one_optimizers_loss_stops_the_run_in_one_line(data_dir: Path, in_tmp: Path) -> None:
    """The decoder's loss is NaN from the first step: its weights break, and the run stops naming the step."""
    with pytest.raises(SystemExit) as error:
        main(
            [
                "fit",
                "--config",
                AE,
                *tiny(data_dir),
                SPLIT,
                "--model.decoder_loss=nan",
                "--trainer.log_every_n_steps=1",
            ]
        )
    message = str(error.value.code)
    assert message.startswith("error: the training loss or the weights became NaN or infinite by step 1"), (
        message
    )
    assert "\n" not in message


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (['--model.optimizers={"decodr": "torch.optim.SGD"}'],
         "error: --model.optimizers names ['decodr'], but SplitAutoencoder's optimizers are ['encoder', "),
        ([FP16], "error: SplitAutoencoder trains with several optimizers, which 16-mixed's one loss scale"),
    ],
    ids=["unknown-name", "16-mixed"],
)  # fmt: skip
def test_bad_settings_of_several_optimizers_are_one_line_before_anything_is_written(
    flags: list[str], message: str, data_dir: Path, in_tmp: Path
) -> None:
    with pytest.raises(SystemExit) as error:
        main(["fit", "--config", AE, *tiny(data_dir), SPLIT, *flags])
    assert str(error.value.code).startswith(message) and "\n" not in str(error.value.code)
    assert not (in_tmp / "runs").exists()


def test_a_model_with_one_optimizer_refuses_optimizers_by_name(data_dir: Path, in_tmp: Path) -> None:
    with pytest.raises(SystemExit) as error:
        main(["fit", "--config", AE, *tiny(data_dir), '--model.optimizers={"decoder": "torch.optim.SGD"}'])
    assert (
        str(error.value.code)
        == "error: AE trains with one optimizer: set --model.optimizer, not --model.optimizers"
    )


@pytest.mark.slow
def test_bf16_trains_both_optimizers(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """bf16-mixed: the split model takes the AE's bf16 steps (the same autocast, the same gradients)."""
    flags = [*tiny(data_dir), *SGD, "--trainer.precision=bf16-mixed"]
    one = fit(tmp_path / "one", monkeypatch, *flags)
    split = fit(tmp_path / "split", monkeypatch, *flags, SPLIT)
    assert_equal(weights(one), weights(split), atol=1e-6)


@pytest.mark.slow
def test_ddp_on_two_processes_equals_one_process_with_two_optimizers(data_dir: Path, tmp_path: Path) -> None:
    """Two SGD iterations of 2 processes x 36 images give the weights of 1 process x 72: each optimizer's
    gradient is averaged over the processes (DDP's own averaging does not see gradients taken part by
    part), and one process of the AE with one optimizer gives them too."""
    runs = {}
    for name, extra in {
        "ddp": [SPLIT, "--config", DDP, f"--data.batch_size={TRAIN_SIZE // 2}", "--trainer.devices=2"],
        "one": [f"--data.batch_size={TRAIN_SIZE}"],
    }.items():
        (tmp_path / name).mkdir()
        run = cli(
            ["fit", "--config", AE, *tiny(data_dir), *SGD, "--trainer.max_epochs=2", *extra],
            cwd=tmp_path / name,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        assert name == "one" or "GLOBAL_RANK: 1, MEMBER: 2/2" in run.stdout + run.stderr
        runs[name] = run_folder(tmp_path / name, "ae") / "checkpoints" / "last.ckpt"
    assert read_checkpoint(runs["ddp"])["global_step"] == 2
    assert_same_weights(runs["ddp"], runs["one"], atol=1e-6)
