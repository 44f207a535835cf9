"""The fast paths: resident data (the same epochs as the DataLoader path) and K optimizer steps per call (the
same weights as K calls), and the epoch-speed benchmark on a tiny setting."""

import csv as csv_module
import json
import subprocess
import sys
import traceback
import warnings
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import TQDMProgressBar
from torch.utils.data import DataLoader, DistributedSampler

from ae_lightning.callbacks import ProgressBar
from ae_lightning.cli import main
from ae_lightning.cli.setup import prepare_fit
from ae_lightning.data import MNISTDataModule
from ae_lightning.data.samplers import ResidentBatches
from tests.conftest import CONFIGS, NUM_TRAIN, REPO, VAL_SIZE, run_folder, tiny, tiny_for
from tests.syncs import WatchSteps, count_host_syncs

TRAIN_SIZE = NUM_TRAIN - VAL_SIZE


def datamodule(data_dir: Path, resident: bool, **kwargs) -> MNISTDataModule:
    module = MNISTDataModule(data_dir=data_dir, val_size=VAL_SIZE, batch_size=16, resident=resident, **kwargs)
    module.setup("fit")
    return module


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_resident_batches_are_the_dataloader_paths_batches(data_dir: Path, split: str) -> None:
    """Same images, same order, same batch boundaries, epoch after epoch."""
    resident, loaded = datamodule(data_dir, resident=True), datamodule(data_dir, resident=False)
    loaders = {"train": "train_dataloader", "val": "val_dataloader", "test": "test_dataloader"}
    fast, slow = getattr(resident, loaders[split])(), getattr(loaded, loaders[split])()
    for epoch in (0, 1):
        for loader in (fast, slow):
            if hasattr(loader.sampler, "set_epoch"):
                loader.sampler.set_epoch(epoch)
        pairs = list(zip(fast, slow, strict=True))
        assert len(pairs) == len(fast) == len(slow)
        for batch_fast, batch_slow in pairs:
            torch.testing.assert_close(batch_fast.inputs, batch_slow.inputs, rtol=0, atol=0)
            assert torch.equal(batch_fast.labels, batch_slow.labels)
            assert torch.equal(batch_fast.index, batch_slow.index)
    if split == "train":
        first_epoch_labels = torch.cat([batch.labels for batch in fast])
        assert len(first_epoch_labels) == TRAIN_SIZE  # every training image once an epoch


@pytest.mark.parametrize("world_size", [2, 3])
def test_resident_ddp_shares_are_those_of_lightnings_distributed_sampler(
    data_dir: Path, world_size: int
) -> None:
    """Under DDP each rank takes its share of one seeded permutation per epoch, exactly as the
    DistributedSampler Lightning puts in the DataLoader path (padded so every rank steps as often)."""
    dataset = datamodule(data_dir, resident=True).datasets["train"]
    for rank in range(world_size):
        ours = ResidentBatches(dataset, batch_size=5, num_replicas=world_size, rank=rank, seed=42)
        lightnings = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=42)
        for epoch in (0, 3):
            ours.set_epoch(epoch)
            lightnings.set_epoch(epoch)
            assert torch.cat(list(ours)).tolist() == list(lightnings)
            assert len(ours) == len(list(ours)) == -(-len(lightnings) // 5)


def test_resident_batches_group_k_batches_per_call(data_dir: Path) -> None:
    dataset = datamodule(data_dir, resident=True).datasets["train"]
    calls = list(ResidentBatches(dataset, batch_size=16, steps_per_call=2))
    assert [len(call) for call in calls] == [2, 2, 1]  # 72 images: batches of 16,16 | 16,16 | 8
    assert (
        torch.cat([batch for call in calls for batch in call]).tolist()
        == torch.cat(list(ResidentBatches(dataset, batch_size=16))).tolist()
    )
    loader = DataLoader(dataset, batch_size=None, sampler=ResidentBatches(dataset, 16, steps_per_call=2))
    first = next(iter(loader))
    assert [batch.inputs.shape for batch in first] == [torch.Size([16, 1, 28, 28])] * 2


def test_k_steps_per_call_give_the_weights_of_k_single_steps(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """2 epochs of the VAE (its noise included) with 4 steps per call and with 1: the same weights, the same
    step count, the same checkpoint names. (Dynamic binarisation draws from the same stream as the VAE's
    noise, and K steps per call binarise their K batches first, so with it the draws interleave otherwise:
    the same distribution, other samples.)"""
    flags = [
        "--config", str(CONFIGS / "vae.yaml"), *tiny(data_dir), "--trainer.max_epochs=2",
        "--trainer.deterministic=true",
    ]  # fmt: skip
    runs = {}
    for k in (1, 4):
        (tmp_path / f"k{k}").mkdir()
        monkeypatch.chdir(tmp_path / f"k{k}")
        runs[k] = main(["fit", *flags, f"--model.steps_per_call={k}"])
        assert runs[k].datamodule.hparams.steps_per_call == k  # the CLI told the data
    assert runs[1].trainer.global_step == runs[4].trainer.global_step == 10
    names = [
        sorted(p.name for p in (run_folder(tmp_path / f"k{k}", "vae") / "checkpoints").iterdir())
        for k in (1, 4)
    ]
    assert names[0][:2] == names[1][:2] and names[0][0].startswith("epoch=0-step=5-")
    for name, weight in runs[1].model.state_dict().items():
        torch.testing.assert_close(runs[4].model.state_dict()[name], weight, rtol=0, atol=1e-6, msg=name)


def test_max_steps_counts_optimizer_steps_with_k_steps_per_call(data_dir: Path, in_tmp: Path) -> None:
    fitted = main(["fit", "--config", str(CONFIGS / "ae.yaml"), *tiny(data_dir), "--model.steps_per_call=4",
                   "--trainer.max_epochs=5", "--trainer.max_steps=6"])  # fmt: skip
    assert fitted.trainer.global_step == 6  # not 8: the second call stops after 2 of its 4 steps


def test_k_steps_per_call_log_by_optimizer_step(data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """Loggers key rows by optimizer step with K steps per call, as with one: validation at the same steps,
    and train/* after each call that passes a multiple of log_every_n_steps, at the call's last step."""
    csv = '{"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "csv"}}'
    rows = {}
    for k in (1, 4):
        (tmp_path / f"k{k}").mkdir()
        monkeypatch.chdir(tmp_path / f"k{k}")
        main(["fit", "--config", str(CONFIGS / "vae.yaml"), *tiny(data_dir), "--trainer.max_epochs=2",
              f"--trainer.logger={csv}", "--trainer.log_every_n_steps=2",
              f"--model.steps_per_call={k}"])  # fmt: skip
        (metrics,) = (tmp_path / f"k{k}" / "csv").glob("*/version_0/metrics.csv")
        with open(metrics) as file:
            rows[k] = list(csv_module.DictReader(file))
    steps = {
        k: {
            stage: [int(row["step"]) for row in rows[k] if row[f"{stage}/loss"]] for stage in ("train", "val")
        }
        for k in rows
    }
    # 5 steps an epoch (batches of 16, 16, 16, 16, 8); K = 4 takes them in calls of 4 and 1
    assert steps[1] == {"train": [1, 3, 5, 7, 9], "val": [4, 9]}
    # the calls ending at steps 4, 9 and 10 pass 2 and 4 | 6 and 8 | 10
    assert steps[4] == {"train": [3, 8, 9], "val": [4, 9]}
    assert [row["epoch"] for row in rows[4] if row["train/loss"]] == ["0", "1", "1"]
    for k in rows:  # the other terms reach the loggers at the same steps (logged only then: self.log is slow)
        for name in ("train/recon", "train/kl", "train/kl_weight"):
            assert [int(row["step"]) for row in rows[k] if row[name]] == steps[k]["train"], (k, name)


@pytest.mark.parametrize(
    ("scheduler", "arguments", "expected_lr"),
    [("ExponentialLR", '"gamma": 0.5', 0.25e-3), ("ReduceLROnPlateau", '"patience": 0, "factor": 0.1', None)],
    ids=["exponential", "plateau"],
)
def test_lr_schedulers_step_once_an_epoch_with_any_k(
    scheduler: str, arguments: str, expected_lr: float | None, data_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    """`--model.lr_scheduler` steps every epoch, with one step per call as with K; a plateau scheduler
    watches val/loss in both."""
    lrs = {}
    for k in (1, 4):
        (tmp_path / f"k{k}").mkdir()
        monkeypatch.chdir(tmp_path / f"k{k}")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fitted = main(["fit", "--config", str(CONFIGS / "ae.yaml"), *tiny(data_dir),
                           "--trainer.max_epochs=2", f"--model.steps_per_call={k}",
                           '--model.lr_scheduler={"class_path": "torch.optim.lr_scheduler.' + scheduler
                           + '", "init_args": {' + arguments + "}}"])  # fmt: skip
        assert not [w for w in caught if "lr scheduler dict contains" in str(w.message)]
        lrs[k] = fitted.trainer.optimizers[0].param_groups[0]["lr"]
        assert fitted.trainer.global_step == 10
    assert lrs[1] == lrs[4]
    if expected_lr is not None:
        assert lrs[1] == pytest.approx(expected_lr)


@pytest.mark.parametrize("k", [1, 4])
def test_training_steps_do_not_wait_for_the_device(
    k: int, data_dir: Path, in_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every tensor turned into a Python number makes the host wait for a GPU. In 10 training steps with the
    progress bar on, the only ones are the bar's 3 reads of the loss (the first step and the last of each
    epoch; with log_every_n_steps 50 the loggers are not due) and the DataLoader's seed, drawn once an epoch
    from a CPU generator. (Lightning's own bar read every prog_bar metric after every step: 20 here.)"""
    active, conversions = [False], []

    def watched(name: str):
        original = getattr(torch.Tensor, name)

        def conversion(self, *args, **kwargs):
            if active[0]:
                conversions.append(traceback.extract_stack(limit=2)[0].filename)
            return original(self, *args, **kwargs)

        return conversion

    for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, watched(name))

    class Watch(Callback):  # from a training batch's start to validation or the epoch's end
        def on_train_batch_start(self, *args) -> None:
            active[0] = True

        def on_validation_start(self, *args) -> None:
            active[0] = False

        on_train_epoch_end = on_validation_start

    cli = main(["--config", str(CONFIGS / "vae.yaml"), *tiny(data_dir), "--trainer.max_epochs=2",
                "--trainer.enable_progress_bar=true", "--trainer.log_every_n_steps=50",
                f"--model.steps_per_call={k}"], run=False)  # fmt: skip
    assert isinstance(cli.trainer.progress_bar_callback, ProgressBar)
    # first, so that it stops watching before the other callbacks' validation and epoch-end hooks run (the
    # NaN check reads the loss there)
    cli.trainer.callbacks.insert(0, Watch())
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 10
    sources = [Path(filename).name for filename in conversions if "torch/utils/data" not in filename]
    assert sources == ["progress.py"] * 3
    assert "train/loss" in cli.trainer.progress_bar_callback.get_metrics(cli.trainer, cli.model)


@pytest.mark.parametrize(
    ("class_path", "init_args", "kind"),
    [
        ("lightning.pytorch.callbacks.TQDMProgressBar", '{"refresh_rate": 7}', TQDMProgressBar),
        ("ae_lightning.callbacks.ProgressBar", '{"refresh_rate": 7, "loss_every_n_steps": 3}', ProgressBar),
    ],
    ids=["lightnings", "ours"],
)
def test_a_progress_bar_from_the_config_is_kept(
    class_path: str, init_args: str, kind: type, data_dir: Path, in_tmp: Path
) -> None:
    bar = f'{{"class_path": "{class_path}", "init_args": {init_args}}}'
    cli = main(["--config", str(CONFIGS / "ae.yaml"), *tiny(data_dir), "--trainer.enable_progress_bar=true",
                f"--trainer.callbacks+={bar}"], run=False)  # fmt: skip
    assert type(cli.trainer.progress_bar_callback) is kind
    assert cli.trainer.progress_bar_callback.refresh_rate == 7
    assert getattr(cli.trainer.progress_bar_callback, "loss_every_n_steps", 3) == 3
    assert (
        main(["--config", str(CONFIGS / "ae.yaml"), *tiny(data_dir)], run=False).trainer.progress_bar_callback
        is None
    )


def test_k_steps_per_call_needs_resident_data(data_dir: Path, in_tmp: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIGS / "ae.yaml"), *tiny(data_dir), "--model.steps_per_call=4",
              "--data.resident=false"])  # fmt: skip
    assert "steps_per_call 4 needs resident data" in str(exit_info.value)


def test_the_dataloader_path_still_fits(data_dir: Path, in_tmp: Path) -> None:
    fitted = main(["fit", "--config", str(CONFIGS / "ae.yaml"), *tiny(data_dir), "--data.resident=false"])
    assert not fitted.datamodule.resident and fitted.trainer.global_step == 5


@pytest.mark.slow
def test_the_benchmark_runs_on_a_tiny_setting(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "speed.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "epoch_speed.py"), f"--data-dir={data_dir}",
         f"--val-size={VAL_SIZE}", "--batch-sizes", "16", "--backbones", "mlp", "conv", "--epochs=1",
         "--steps-per-call=2", "--quiet", f"--out={out}"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["backbone"], r["pipeline"]) for r in rows] == [
        (backbone, pipeline)
        for backbone in ("mlp", "conv")
        for pipeline in ("conventional", "plain_resident", "default", "fast")
    ]
    for row in rows:
        assert row["seconds_per_epoch"] > 0 and row["images_per_second"] > 0 and row["peak_memory_mb"] > 0
        assert torch.isfinite(torch.tensor(row["final_train_loss"]))
        assert row["speedup"] > 0
    assert {row["steps_per_call"] for row in rows if row["pipeline"] == "fast"} == {2}
    assert "| mlp | 16 | conventional |" in done.stdout


def test_the_sync_counter_sees_every_kind_of_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the test below counts, each once: a number read, a bool, a data-dependent size, a host copy, and
    a tensor this project makes of host data (on a GPU a copy from the host, which the first GPU run found;
    a draw on the CPU moved to the device is one too, which a CPU cannot tell apart: device_check.py finds
    those)."""
    x = torch.arange(6.0)
    with count_host_syncs(monkeypatch) as syncs:
        syncs.active = True
        x.sum().item(), bool(x[0] > 1), x[x > 2], x.nonzero(), x.cpu(), x.tolist(), x.unique()
        torch.as_tensor(0.0, device=x.device)
        torch.randn(2, device=x.device)  # not counted: drawn where it is used
        syncs.active = False
        x.sum().item()  # not counted: switched off
    kinds = [entry.split(" @ ")[0] for entry in syncs.found]
    assert kinds == [
        "aten::_local_scalar_dense", "aten::_local_scalar_dense", "aten::index with a boolean mask",
        "aten::nonzero", "Tensor.cpu", "Tensor.tolist", "aten::_unique2", "a tensor made of host data",
    ]  # fmt: skip
    assert all(entry.endswith(f"test_speed.py:{entry.split(':')[-1]}") for entry in syncs.found)


#: configs whose no-wait check runs in the default test run: one of each kind of step (a conditional, an
#: importance-weighted, a quantised, a one-class, a rejection-sampled and an autograd-in-the-loss model); the
#: full run (CI) checks every config, with K = 1 and 4
NO_WAIT_FAST = {"vae", "cvae", "iwae", "vqvae_conv", "folder_anomaly", "svae", "hvae"}


@pytest.mark.parametrize("k", [1, pytest.param(4, marks=pytest.mark.slow)])
@pytest.mark.parametrize(
    "config",
    [
        pytest.param(path.stem, marks=() if path.stem in NO_WAIT_FAST else pytest.mark.slow)
        for path in sorted(CONFIGS.glob("*.yaml"))
    ],
)
def test_every_config_trains_and_evaluates_without_waiting_for_the_device(
    config: str, k: int, data_dir: Path, in_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No training step (after the first call), validation batch or test batch of any config, with one step
    per call or K, makes the host wait for a GPU: no number read, no data-dependent size, no copy to the
    CPU (counted at the dispatcher, tests/syncs.py), in steps that log nothing. The results are read at the
    end of an epoch. (A one-class config trains on a single batch an epoch: max_steps counts steps.)"""
    path = CONFIGS / f"{config}.yaml"
    cli = main(["--config", str(path), *tiny_for(path, data_dir), f"--model.steps_per_call={k}",
                "--trainer.max_epochs=10", "--trainer.max_steps=6", "--trainer.log_every_n_steps=1000"],
               run=False)  # fmt: skip
    prepare_fit(cli.trainer, cli.model)  # as `fit` does (with K > 1 the module clips gradients itself)
    with count_host_syncs(monkeypatch) as syncs:
        watch = WatchSteps(syncs)
        cli.trainer.callbacks.insert(0, watch)
        cli.trainer.callbacks.append(WatchSteps.Last(watch))
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
        cli.trainer.test(cli.model, datamodule=cli.datamodule)
    assert watch.calls > 1 and cli.trainer.global_step == 6
    assert watch.stages == {"train": [], "val": [], "test": []}
    assert "test/loss" in cli.trainer.callback_metrics
    checkpoints = run_folder(in_tmp, config) / "checkpoints"
    assert (checkpoints / "last.ckpt").is_file()
    images = len(cli.model.model.image_shape) == 3
    assert (checkpoints / "last.png").is_file() == images  # points get no grid


def test_every_exported_model_has_a_config() -> None:
    """The test above covers every model through its configs."""
    import ae_lightning.models

    used = {path.read_text().split("class_path: ae_lightning.models.")[-1].split()[0] for path in
            CONFIGS.glob("*.yaml") if "class_path: ae_lightning.models." in path.read_text()}  # fmt: skip
    assert used == set(ae_lightning.models.__all__) - {"AutoencoderModule"}


def test_k_steps_per_call_warn_in_optimizer_steps_and_leave_no_warnings_filter(
    data_dir: Path, in_tmp: Path
) -> None:
    """Lightning's warning that an epoch has fewer calls than log_every_n_steps is replaced by one that counts
    optimizer steps; the filter that hides Lightning's is gone once training starts."""
    with pytest.warns(UserWarning) as record:
        before = list(warnings.filters)
        main(["fit", "--config", str(CONFIGS / "ae.yaml"), *tiny(data_dir), "--model.steps_per_call=2",
              "--trainer.log_every_n_steps=50"])  # fmt: skip
        assert warnings.filters == before
    messages = [str(warning.message) for warning in record]
    expected = "an epoch has at most 6 optimizer steps, fewer than log_every_n_steps (50)"
    assert any(expected in message for message in messages)
    assert not any("The number of training batches" in m for m in messages)
