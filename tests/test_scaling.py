"""Scaling out and stopping safely: DDP on CPU processes, two "nodes" with torchrun, mixed precision,
exact resume, preemption by SIGTERM and by SLURM's SIGUSR1, and a crashing rank. The multi-process tests run
the real `cli.py` as a user would and are marked slow."""

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ae_lightning.cli import main
from ae_lightning.data import MNISTDataModule
from ae_lightning.data.samplers import TrainingOrder
from tests.conftest import CONFIGS, NUM_TRAIN, REPO, VAL_SIZE, read_png, run_and_fail, run_folder, tiny

AE, DDP, BF16 = (str(CONFIGS / name) for name in ("ae.yaml", "trainer/ddp.yaml", "trainer/bf16.yaml"))
#: plain SGD: one step is lr x gradient, so equal gradients give equal weights (Adam's first step is
#: lr x sign(gradient), which would magnify rounding differences of near-zero gradients)
SGD = ["--model.optimizer=torch.optim.SGD", "--model.optimizer.lr=0.5"]
#: the tiny training split (72 images) read as one batch by one process, or as two halves by two
TRAIN_SIZE = NUM_TRAIN - VAL_SIZE


def cli(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 240):
    """Runs `python cli.py ARGS` in `cwd`, as a user would (the tests' callbacks importable)."""
    return subprocess.run(
        [sys.executable, str(REPO / "cli.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore", **(env or {})},
    )


def callback_flag(name: str, **init_args: object) -> str:
    """`--trainer.callbacks+=...` adding one of tests/callbacks.py."""
    return "--trainer.callbacks+=" + json.dumps(
        {"class_path": f"tests.callbacks.{name}", "init_args": init_args}
    )


def state_dict(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


def assert_same_weights(a: Path, b: Path, atol: float) -> None:
    first, second = state_dict(a), state_dict(b)
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=0, atol=atol, msg=name)


def monitored_score(ckpt: Path) -> float:
    """The `val/loss` the checkpoint callback saw when it saved `ckpt`, at full precision."""
    states = torch.load(ckpt, map_location="cpu", weights_only=True)["callbacks"]
    (state,) = [value for key, value in states.items() if key.startswith("SampleGridCheckpoint")]
    return float(state["current_score"])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- in one process ---


def test_training_order_depends_only_on_seed_and_epoch() -> None:
    first, second = TrainingOrder(range(50), seed=7), TrainingOrder(range(50), seed=7)
    torch.manual_seed(0)
    epoch0 = list(first)
    torch.manual_seed(1)  # the global stream plays no part
    assert list(second) == epoch0
    assert sorted(epoch0) == list(range(50))
    first.set_epoch(1)
    assert list(first) != epoch0


@pytest.mark.parametrize("resident", [True, False])
def test_a_resumed_loader_hands_out_the_rest_of_its_epoch_and_then_whole_epochs(
    data_dir: Path, resident: bool
) -> None:
    """The state of a training loader after 2 of 5 batches, loaded into a fresh one: the fresh one hands out
    batches 3 to 5 of that epoch, then the next epoch whole; a state from another epoch skips nothing."""

    def loader():
        datamodule = MNISTDataModule(data_dir=data_dir, val_size=VAL_SIZE, batch_size=16, resident=resident)
        datamodule.setup("fit")
        return datamodule.train_dataloader()

    def labels(batches) -> list[list[int]]:
        return [batch.labels.tolist() for batch in batches]

    unbroken = loader()
    unbroken.sampler.set_epoch(3)
    epoch3 = labels(unbroken)
    unbroken.sampler.set_epoch(4)
    epoch4 = labels(unbroken)
    stopped = loader()
    stopped.sampler.set_epoch(3)
    it = iter(stopped)
    first_two = labels([next(it), next(it)])
    state = stopped.state_dict()
    assert state == {"epoch": 3, "items": 2} and first_two == epoch3[:2]

    resumed = loader()
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(3)  # as Lightning does before the epoch's first batch
    assert labels(resumed) == epoch3[2:]
    assert resumed.state_dict() == {"epoch": 3, "items": 5}
    resumed.sampler.set_epoch(4)
    assert labels(resumed) == epoch4

    ended = loader()
    ended.load_state_dict({"epoch": 3, "items": 5})  # saved at the end of epoch 3: epoch 4 comes next
    ended.sampler.set_epoch(4)
    assert labels(ended) == epoch4


class FakeTrainer:
    """What the datamodule asks of its trainer: world size, rank, nodes and device."""

    def __init__(self, world_size: int, global_rank: int, num_nodes: int = 1) -> None:
        self.world_size, self.global_rank, self.num_nodes = world_size, global_rank, num_nodes
        self.strategy = type("Strategy", (), {"root_device": torch.device("cpu")})()


def sampled_indices(sampler) -> list[int]:
    """The indices a sampler gives, whether one by one or (resident data) in whole-batch tensors."""
    items = list(sampler)
    return torch.cat(items).tolist() if items and isinstance(items[0], torch.Tensor) else items


@pytest.mark.parametrize("resident", [True, False])
@pytest.mark.parametrize("world_size", [2, 3])
def test_each_rank_validates_a_disjoint_share_and_together_every_image_once(
    data_dir: Path, world_size: int, resident: bool
) -> None:
    """No image is repeated to even out the ranks' shares (DistributedSampler would repeat some), so the
    mean that Lightning reduces over ranks is the mean over the validation set."""
    seen = []
    for rank in range(world_size):
        datamodule = MNISTDataModule(data_dir=data_dir, val_size=25, batch_size=4, resident=resident)
        datamodule.trainer = FakeTrainer(world_size, rank)
        datamodule.setup("fit")
        seen += sampled_indices(datamodule.val_dataloader().sampler)
    assert sorted(seen) == list(range(25))


def test_each_rank_saves_and_restores_the_stream_of_its_own_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """On GPUs each rank's checkpointed streams hold its own device's generator, put back on that device
    (torch's per-device API is faked here; benchmarks/device_check.py uses the real one); a checkpoint's
    list of per-rank streams gives each rank its own."""
    from ae_lightning.models.rng import rank_states, rng_states, set_rng_states

    restored = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: torch.tensor([7, device.index]))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((state, device)))
    states = rng_states(torch.device("cuda", 1))
    assert states["cuda"].tolist() == [7, 1]
    set_rng_states(states, torch.device("cuda", 1))
    assert [(state.tolist(), device) for state, device in restored] == [([7, 1], torch.device("cuda", 1))]
    assert "cuda" not in rng_states(torch.device("cpu"))
    saved = [{"rank": 0}, {"rank": 1}]
    assert [rank_states(saved, rank, 2) for rank in (0, 1)] == saved
    assert rank_states({"rank": 0}, 1, 2) == {"rank": 0}  # a checkpoint of an earlier version: one for all


def test_bf16_mixed_fits_on_cpu(data_dir: Path, in_tmp: Path) -> None:
    fitted = main(["fit", "--config", AE, "--config", BF16, *tiny(data_dir)])
    assert fitted.trainer.precision == "bf16-mixed"
    assert torch.isfinite(fitted.trainer.callback_metrics["val/loss"])
    ckpt = run_folder(in_tmp, "ae") / "checkpoints" / "last.ckpt"
    assert {t.dtype for t in state_dict(ckpt).values()} == {torch.float32}  # float32 weights
    assert ckpt.with_suffix(".png").is_file()


#: float16 autocast with torch's GradScaler on the CPU, where `--trainer.precision 16-mixed` would become bf16
FP16 = "--trainer.plugins=" + json.dumps(
    {
        "class_path": "lightning.pytorch.plugins.precision.MixedPrecision",
        "init_args": {"precision": "16-mixed", "device": "cpu"},
    }
)
PRECISIONS = {"32": [], "bf16": ["--config", BF16], "fp16": [FP16]}


@pytest.mark.parametrize("precision", ["32", "bf16", "fp16"])
@pytest.mark.parametrize("k", [1, 4])
def test_gradient_clipping_bounds_every_step_with_one_or_k_steps_per_call(
    k: int, precision: str, data_dir: Path, in_tmp: Path
) -> None:
    """`--trainer.gradient_clip_val` works in every configuration (Lightning itself refuses it with K steps
    per call): plain SGD steps of gradients clipped to norm 1e-3 move the weights by at most lr x 1e-3 each
    (after the gradients are unscaled, with 16-mixed's GradScaler), where unclipped steps move them far."""
    flags = ["fit", "--config", AE, *tiny(data_dir), *PRECISIONS[precision], *SGD,
             f"--model.steps_per_call={k}", callback_flag("InitialWeights")]  # fmt: skip
    moved = {}
    for clip in (None, 1e-3):
        clipping = [f"--trainer.gradient_clip_val={clip}"] if clip else []
        fitted = main([*flags, *clipping])
        (initial,) = [c.weights for c in fitted.trainer.callbacks if type(c).__name__ == "InitialWeights"]
        final = fitted.model.state_dict()
        moved[clip] = torch.cat([(final[name] - initial[name]).flatten() for name in initial]).norm().item()
        assert fitted.trainer.global_step == 5
    assert moved[1e-3] <= 5 * 0.5 * 1e-3 * 1.01  # 5 steps of lr 0.5 x a gradient of norm <= 1e-3
    assert moved[None] > 100 * moved[1e-3]


def test_clipping_a_fused_optimizer_in_mixed_precision_unfuses_it_with_a_notice(
    data_dir: Path, in_tmp: Path
) -> None:
    """The configs' fused Adam cannot be clipped in mixed precision (Lightning refuses): it is built unfused,
    with a warning, and the run trains."""
    with pytest.warns(UserWarning, match="gradient clipping in bf16-mixed precision: Adam with fused=False"):
        fitted = main(
            ["fit", "--config", AE, "--config", BF16, *tiny(data_dir), "--trainer.gradient_clip_val=1"]
        )
    assert fitted.trainer.optimizers[0].defaults["fused"] is False
    assert torch.isfinite(fitted.trainer.callback_metrics["val/loss"])
    plain = main(["fit", "--config", AE, "--config", BF16, *tiny(data_dir)])  # no clipping: stays fused
    assert plain.trainer.optimizers[0].defaults["fused"] is True


def test_16_mixed_trains_with_a_grad_scaler_in_either_path_and_resumes_it_exactly(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """float16 with dynamic loss scaling (torch's GradScaler, here on the CPU): K = 4 steps per call take the
    steps of K = 1, scaler included; the checkpoint holds the scaler, and 2 epochs + resume + 2 epochs equals
    4 epochs to the bit; val/loss is within 5% of 32-bit training's (the scaler skips the first steps, whose
    gradients overflow float16 while it backs off: 5 of the 20 here)."""
    flags = ["fit", "--config", str(CONFIGS / "vae.yaml"), *tiny(data_dir), "--trainer.deterministic=true"]
    runs = {}
    for name, extra in {
        "k1": [FP16, "--trainer.max_epochs=4"],
        "k4": [FP16, "--trainer.max_epochs=4", "--model.steps_per_call=4"],
        "32": ["--trainer.max_epochs=4"],
        "resumed": [FP16, "--trainer.max_epochs=2", "--model.steps_per_call=4"],
    }.items():
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        runs[name] = main([*flags, *extra])
    runs["resumed"] = main(
        [*flags, FP16, "--trainer.max_epochs=4", "--model.steps_per_call=4", "--ckpt_path=last"]
    )
    last = "runs/vae/version_0/checkpoints/last.ckpt"
    scalers = {
        name: torch.load(tmp_path / name / last, weights_only=True).get("MixedPrecision")
        for name in ("k1", "k4", "resumed")
    }
    assert scalers["k1"]["scale"] <= 2.0**12  # backed off from 2^16: float16 gradients overflowed
    assert scalers["k1"] == scalers["k4"] == scalers["resumed"]
    assert_same_weights(tmp_path / "k4" / last, tmp_path / "k1" / last, atol=1e-6)
    assert_same_weights(tmp_path / "resumed" / last, tmp_path / "k4" / last, atol=0)
    fp16_loss, fp32_loss = (runs[name].trainer.callback_metrics["val/loss"].item() for name in ("k1", "32"))
    assert fp16_loss == pytest.approx(fp32_loss, rel=0.05)


def test_resume_from_last_continues_the_same_run_exactly(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """3 epochs in one go == 1 epoch, then `fit --ckpt_path last` to epoch 3: the same data order, the same
    VAE noise and dynamic binarisation, so the same weights; and the resumed run stays in its folder."""
    flags = [
        "--config", str(CONFIGS / "vae.yaml"), *tiny(data_dir),
        "--data.value_range=[0, 1]", "--data.binarize=true",  # random data too
        "--trainer.deterministic=true",
    ]  # fmt: skip
    for folder in ("unbroken", "resumed"):
        (tmp_path / folder).mkdir()
    monkeypatch.chdir(tmp_path / "unbroken")
    main(["fit", *flags, "--trainer.max_epochs=3"])
    monkeypatch.chdir(tmp_path / "resumed")
    main(["fit", *flags, "--trainer.max_epochs=1"])
    resumed = main(["fit", *flags, "--trainer.max_epochs=3", "--ckpt_path=last"])

    assert resumed.trainer.global_step == 3 * -(-TRAIN_SIZE // 16)  # 5 batches per epoch
    assert [p.name for p in (tmp_path / "resumed" / "runs" / "vae").iterdir()] == ["version_0"]
    last = "runs/vae/version_0/checkpoints/last.ckpt"
    assert_same_weights(tmp_path / "unbroken" / last, tmp_path / "resumed" / last, atol=1e-6)


def test_resume_from_last_without_a_previous_run_starts_afresh(data_dir: Path, in_tmp: Path) -> None:
    fitted = main(["fit", "--config", AE, *tiny(data_dir), "--ckpt_path", "last"])
    assert fitted.trainer.global_step == 5
    assert (run_folder(in_tmp, "ae") / "checkpoints" / "last.ckpt").is_file()


def test_test_and_predict_with_ckpt_path_last_take_the_newest_runs_last_checkpoint(
    data_dir: Path, in_tmp: Path
) -> None:
    main(["fit", "--config", AE, *tiny(data_dir)])
    last = run_folder(in_tmp, "ae") / "checkpoints" / "last.ckpt"
    for subcommand in ("test", "predict"):
        done = main([subcommand, "--config", AE, *tiny(data_dir), "--ckpt_path", "last"])
        assert Path(done.trainer.ckpt_path).resolve() == last.resolve()  # not untrained weights


def test_ckpt_path_last_without_a_run_to_test_is_one_clear_error(data_dir: Path, in_tmp: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["test", "--config", AE, *tiny(data_dir), "--ckpt_path", "last"])
    message = str(exit_info.value)
    assert message.startswith("error: --ckpt_path last: no runs/ae/version_<n>/checkpoints/last.ckpt to test")


def fake_command(bin_dir: Path, name: str, log: Path) -> None:
    """A stand-in for `name` on PATH that writes its arguments, one per line, to `log`."""
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / name).write_text(f'#!/bin/sh\nfor arg in "$@"; do echo "$arg"; done > {log}\n')
    (bin_dir / name).chmod(0o755)


@pytest.mark.parametrize("gpus", ["4", ""])
def test_the_sbatch_script_ends_the_job_with_a_failed_process_and_shows_each_every_gpu(
    gpus: str, tmp_path: Path
) -> None:
    """srun ends every process when one fails, and with GPUs lets each see all of its node's (Lightning puts
    local rank r on GPU r); devices and nodes are SLURM's."""
    fake_command(tmp_path / "bin", "srun", tmp_path / "srun.log")
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "SLURM_JOB_ID": "77",
           "SLURM_NNODES": "2", "SLURM_NTASKS_PER_NODE": "4", "SLURM_GPUS_ON_NODE": gpus}  # fmt: skip
    script = REPO / "scripts" / "slurm" / "train.sbatch"
    done = subprocess.run(["bash", str(script), "configs/ae.yaml", "--trainer.max_epochs", "3"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=30)  # fmt: skip
    assert done.returncode == 0, done.stderr
    args = (tmp_path / "srun.log").read_text().split("\n")
    assert args[0] == "--kill-on-bad-exit=1"
    assert ("--gpu-bind=none" in args) == bool(gpus)
    flags = " ".join(args)
    assert "--trainer.num_nodes 2 --trainer.devices 4" in flags and "--trainer.max_epochs 3" in flags


@pytest.mark.parametrize(
    "variables, expected",
    [
        ({"GPUS": "4"}, ["--nodes=1", "--ntasks-per-node=4", "--gpus-per-node=4"]),
        ({"GPUS": "8", "NODES": "2"}, ["--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8"]),
        ({"GPUS": "0", "TASKS": "2"}, ["--nodes=1", "--ntasks-per-node=2"]),
        ({"GPUS": "2", "SBATCH_ARGS": "--partition=gpu --time=1:00:00"},
         ["--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=2", "--partition=gpu", "--time=1:00:00"]),
    ],
)  # fmt: skip
def test_submit_asks_for_gpus_with_one_variable(variables: dict, expected: list[str], tmp_path: Path) -> None:
    fake_command(tmp_path / "bin", "sbatch", tmp_path / "sbatch.log")
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", **variables}
    script = REPO / "scripts" / "slurm" / "submit.sh"
    done = subprocess.run([str(script), "configs/vae.yaml", "--trainer.max_epochs", "5"], env=env,
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert done.returncode == 0, done.stderr
    args = (tmp_path / "sbatch.log").read_text().split()
    assert args == [
        *expected,
        str(script.parent / "train.sbatch"),
        "configs/vae.yaml",
        "--trainer.max_epochs",
        "5",
    ]


def test_a_process_shown_one_gpu_of_several_is_one_line_before_anything_runs(
    data_dir: Path, in_tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Where the cluster binds one GPU to each task, local rank 1 would look for GPU 1 and fail after the
    job's wait in the queue: the CLI says what to change, before any run folder is made."""
    for name, value in {"SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "4", "SLURM_JOB_NAME": "ae",
                        "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    on_any_device = [flag for flag in tiny(data_dir) if not flag.startswith("--trainer.accelerator")]
    line = run_and_fail(["fit", "--config", AE, *on_any_device], capsys)
    assert line.startswith("error: SLURM runs 4 processes on this node but shows this one 1 GPU(s)")
    assert "srun --gpu-bind=none" in line
    assert not (in_tmp / "runs").exists()


# --- several processes, through the real command ---


@pytest.mark.slow
def test_ddp_on_two_processes_equals_one_process_with_the_whole_batch(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One SGD step of 2 processes x 36 images gives the weights of 1 process x 72 (the same images: the
    training split is exactly one global batch); checkpoints and grid are written once, the grid shows the
    same fixed images, and the logged val/loss is the mean over the whole validation set."""
    (tmp_path / "ddp").mkdir()
    ddp = cli(
        ["fit", "--config", AE, "--config", DDP, *tiny(data_dir), *SGD,
         f"--data.batch_size={TRAIN_SIZE // 2}", "--trainer.devices=2"],
        cwd=tmp_path / "ddp",
    )  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in ddp.stdout + ddp.stderr

    (tmp_path / "one").mkdir()
    one_args = ["fit", "--config", AE, *tiny(data_dir), *SGD, f"--data.batch_size={TRAIN_SIZE}"]
    one = cli(one_args, cwd=tmp_path / "one")
    assert one.returncode == 0, one.stderr[-3000:]

    runs = tmp_path / "ddp" / "runs" / "ae"
    assert [p.name for p in runs.iterdir()] == ["version_0"]  # one run folder, not one per rank
    checkpoints = runs / "version_0" / "checkpoints"
    files = sorted(p.name for p in checkpoints.iterdir())
    assert len(files) == 4 and files[0].startswith("epoch=0-step=1-")
    assert files[-2:] == ["last.ckpt", "last.png"]
    ddp_last = checkpoints / "last.ckpt"
    one_last = run_folder(tmp_path / "one", "ae") / "checkpoints" / "last.ckpt"
    assert_same_weights(ddp_last, one_last, atol=1e-6)

    # the same fixed validation images (rows 1 and 3 of 30 px cells) at world size 2 and 1
    ddp_grid, one_grid = read_png(ddp_last.with_suffix(".png")), read_png(one_last.with_suffix(".png"))
    for row in (0, 2):
        assert torch.equal(ddp_grid[:, row * 30 : row * 30 + 32], one_grid[:, row * 30 : row * 30 + 32])

    # val/loss logged under DDP == one process validating the same weights on the whole validation set
    monkeypatch.chdir(tmp_path)  # validate's run folder goes there, not into the checkout
    validated = main(["validate", "--config", AE, *tiny(data_dir), "--ckpt_path", str(ddp_last)])
    whole_set = validated.trainer.callback_metrics["val/loss"].item()
    assert monitored_score(ddp_last) == pytest.approx(whole_set, rel=1e-5)


@pytest.mark.slow
def test_two_nodes_started_with_torchrun_train_together(data_dir: Path, tmp_path: Path) -> None:
    """Two processes on one machine, each started as one node by torchrun, as on two machines."""
    port = free_port()
    procs = []
    for node in (0, 1):
        (tmp_path / f"node{node}").mkdir()
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
            f"--node_rank={node}", "--master_addr=127.0.0.1", f"--master_port={port}",
            str(REPO / "cli.py"), "fit", "--config", AE, "--config", DDP, *tiny(data_dir),
            "--trainer.num_nodes=2", "--trainer.devices=1",
        ]  # fmt: skip
        env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
        procs.append(
            subprocess.Popen(
                command,
                cwd=tmp_path / f"node{node}",
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [proc.communicate(timeout=240)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in outputs[0] and "GLOBAL_RANK: 1, MEMBER: 2/2" in outputs[1]
    checkpoints = run_folder(tmp_path / "node0", "ae") / "checkpoints"
    assert (checkpoints / "last.ckpt").is_file() and read_png(checkpoints / "last.png").shape[0] == 3
    assert not list((tmp_path / "node1").rglob("*.ckpt"))  # only global rank zero writes


@pytest.mark.slow
@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGUSR1"])
def test_a_signal_mid_epoch_stops_with_status_143_and_the_resumed_run_equals_an_unbroken_one(
    signal_name: str, data_dir: Path, tmp_path: Path
) -> None:
    """`kill` (SIGTERM, or SIGUSR1 outside SLURM) at step 2 of 5: the run saves last.ckpt and its grid and
    exits with status 143 (so `fit && test` stops); `fit --ckpt_path last` goes on in the same folder from
    the third batch of epoch 0 and ends with the weights of a run that never stopped (the same batches, VAE
    noise and binarisation draws)."""
    flags = ["--config", str(CONFIGS / "vae.yaml"), *tiny(data_dir), "--trainer.max_epochs=2",
             "--data.value_range=[0, 1]", "--data.binarize=true", "--trainer.deterministic=true"]  # fmt: skip
    (tmp_path / "unbroken").mkdir()
    unbroken = cli(["fit", *flags], cwd=tmp_path / "unbroken")
    assert unbroken.returncode == 0, unbroken.stderr[-3000:]

    stopped = cli(["fit", *flags, callback_flag("SendSignal", step=2, signals=[signal_name])], cwd=tmp_path)
    assert f"sends itself ['{signal_name}']" in stopped.stdout, stopped.stderr[-3000:]
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert "Traceback" not in stopped.stderr
    last = run_folder(tmp_path, "vae") / "checkpoints" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=True)
    assert saved["global_step"] == 2 and last.with_suffix(".png").is_file()
    assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 0, "items": 2}]

    resumed = cli(["fit", *flags, "--ckpt_path=last"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Restoring states from the checkpoint path at {last}" in resumed.stdout + resumed.stderr
    assert "not resumable" not in resumed.stderr  # Lightning's warning for loaders that cannot resume
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 10
    assert [p.name for p in (tmp_path / "runs" / "vae").iterdir()] == ["version_0"]
    assert_same_weights(last, tmp_path / "unbroken" / "runs/vae/version_0/checkpoints/last.ckpt", atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("k", [1, 4])
def test_slurm_sigusr1_saves_at_a_step_boundary_requeues_and_the_requeued_job_resumes_exactly(
    k: int, data_dir: Path, tmp_path: Path
) -> None:
    """What SLURM does with `--signal=SIGUSR1@90` and `--requeue`, without a cluster: the job's environment,
    and SIGUSR1 arriving inside optimizer step 2 (after its backward; with K = 4, inside the first call). The
    run finishes the step (the call), then saves an HPC checkpoint there and calls `scontrol requeue` (a
    stand-in records it); the requeued job (SLURM_RESTART_COUNT=1) resumes from it in the same run folder,
    with the flags of scripts/slurm/train.sbatch, and ends with the weights of a job that never stopped, to
    the bit (VAE noise and dynamic binarisation included)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/scontrol.log\n')
    (bin_dir / "scontrol").chmod(0o755)
    slurm = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "ae",
        "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": "1", "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost",
    }  # fmt: skip
    job = [
        "fit", "--config", str(CONFIGS / "vae.yaml"), *tiny(data_dir), "--trainer.max_epochs=2",
        "--data.value_range=[0, 1]", "--data.binarize=true", "--trainer.deterministic=true",
        f"--model.steps_per_call={k}",
        "--trainer.default_root_dir=runs/slurm/4242", "--trainer.logger.init_args.version=job_4242",
    ]  # fmt: skip
    (tmp_path / "unbroken").mkdir()
    unbroken = cli(job, cwd=tmp_path / "unbroken", env=slurm)
    assert unbroken.returncode == 0, unbroken.stderr[-3000:]

    preempted = cli([*job, callback_flag("SignalBeforeOptimizerStep", step=1, signals=["SIGUSR1"])],
                    cwd=tmp_path, env=slurm)  # fmt: skip
    assert "sends itself ['SIGUSR1'] inside step 1" in preempted.stdout, preempted.stderr[-3000:]
    assert preempted.returncode == 143, preempted.stderr[-3000:]
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    hpc = tmp_path / "runs/slurm/4242/hpc_ckpt_1.ckpt"
    saved = torch.load(hpc, map_location="cpu", weights_only=True)
    # at the end of the step (K = 1: step 2) or of the call (K = 4: steps 1-4, the loader's first item)
    assert saved["global_step"] == (2 if k == 1 else 4)
    items = 2 if k == 1 else 1
    assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 0, "items": items}]

    requeued = cli(job, cwd=tmp_path, env={**slurm, "SLURM_RESTART_COUNT": "1"})
    assert requeued.returncode == 0, requeued.stderr[-3000:]
    output = requeued.stdout + requeued.stderr
    restored = re.search(r"Restoring states from the checkpoint path at (\S+)", output)
    assert restored and (tmp_path / restored[1]).resolve() == hpc
    last = "runs/vae/job_4242/checkpoints/last.ckpt"
    assert torch.load(tmp_path / last, map_location="cpu", weights_only=True)["global_step"] == 10
    assert (tmp_path / last).with_suffix(".png").is_file()
    assert_same_weights(tmp_path / last, tmp_path / "unbroken" / last, atol=0)


@pytest.mark.slow
def test_two_processes_resume_every_ranks_random_streams_exactly(data_dir: Path, tmp_path: Path) -> None:
    """Two gloo processes whose ranks draw from distinct streams (VAE noise, dynamic binarisation): 1 epoch,
    then `fit --ckpt_path last` to epoch 2, ends with the weights and, on every rank, the random stream of
    the unbroken 2-epoch run. (Restoring rank zero's streams on rank one would fail this.)"""
    flags = [
        "fit", "--config", str(CONFIGS / "vae.yaml"), "--config", DDP, *tiny(data_dir),
        "--trainer.devices=2", "--data.batch_size=12", "--data.value_range=[0, 1]", "--data.binarize=true",
        "--trainer.deterministic=true",
    ]  # fmt: skip
    for folder in ("unbroken", "resumed"):
        (tmp_path / folder).mkdir()
    streams = callback_flag("StreamsByRank", folder="streams")
    runs = [
        cli([*flags, "--trainer.max_epochs=2", streams], cwd=tmp_path / "unbroken"),
        cli([*flags, "--trainer.max_epochs=1", streams], cwd=tmp_path / "resumed"),
        cli([*flags, "--trainer.max_epochs=2", "--ckpt_path=last", streams], cwd=tmp_path / "resumed"),
    ]
    for run in runs:
        assert run.returncode == 0, run.stderr[-3000:]
    (first_epoch,) = (tmp_path / "resumed" / "runs/vae/version_0/checkpoints").glob("epoch=0-*.ckpt")
    saved = torch.load(first_epoch, map_location="cpu", weights_only=True)
    assert len(saved["ae_lightning_rng_states"]) == 2  # one set of streams per rank
    unbroken, resumed = (
        [torch.load(tmp_path / folder / "streams" / f"stream_{rank}.pt") for rank in (0, 1)]
        for folder in ("unbroken", "resumed")
    )
    assert not torch.equal(unbroken[0], unbroken[1])  # the ranks' streams differ
    for rank in (0, 1):
        assert torch.equal(resumed[rank], unbroken[rank]), f"rank {rank}"
    last = "runs/vae/version_0/checkpoints/last.ckpt"
    assert_same_weights(tmp_path / "resumed" / last, tmp_path / "unbroken" / last, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("rank", [1, 0])
def test_a_crashing_rank_ends_the_whole_job(data_dir: Path, tmp_path: Path, rank: int) -> None:
    """One of two DDP ranks dies abruptly at step 2: the job exits with an error within the timeout
    (no rank left waiting for the dead one)."""
    result = cli(
        ["fit", "--config", AE, "--config", DDP, *tiny(data_dir), "--trainer.devices=2",
         "--trainer.max_epochs=5",
         callback_flag("CrashRank", step=2, rank=rank)],
        cwd=tmp_path, timeout=120,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert f"rank {rank} crashes" in output
    assert result.returncode != 0
    # the surviving rank's error names the cause: its peer went away
    assert "Check the logs of the remote worker" in output


@pytest.mark.slow
def test_a_hanging_rank_ends_the_job_within_the_step_watchdogs_limit(data_dir: Path, tmp_path: Path) -> None:
    """Rank 1 hangs alive after step 2 (no connection closes: gloo would wait out its 30-minute timeout, as
    NCCL does for a dead rank): the step watchdog ends every process within its limit (6 s here), with one
    line saying why. Data preparation and set-up before training are not watched."""
    start = time.monotonic()
    result = cli(
        ["fit", "--config", AE, "--config", DDP, *tiny(data_dir), "--trainer.devices=2",
         "--trainer.max_epochs=5", "--step_watchdog.minutes=0.1", callback_flag("HangRank", step=2, rank=1)],
        cwd=tmp_path, timeout=120,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert "rank 1 hangs" in output
    assert result.returncode == 1, output[-3000:]
    assert "no training or validation step finished for 0.1 minutes" in result.stderr
    assert time.monotonic() - start < 60


@pytest.mark.slow
def test_ddp_on_a_folder_decodes_once_and_tests_the_whole_set(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes on an image folder: the files are decoded once (prepare_data, then both ranks read the
    cache), and the test AUROC under DDP is that of one process testing the same checkpoint."""
    from tests.conftest import tiny_folder

    folder = tiny_folder(data_dir / "inspection", tmp_path / "cache")
    flags = ["--config", str(CONFIGS / "folder_anomaly.yaml"), *folder]
    fitted = cli(["fit", *flags, "--config", DDP, "--trainer.devices=2"], cwd=tmp_path)
    assert fitted.returncode == 0, fitted.stderr[-3000:]
    assert (fitted.stdout + fitted.stderr).count("Decoded ") == 1
    tested = cli(["test", *flags, "--config", DDP, "--trainer.devices=2", "--ckpt_path=last"], cwd=tmp_path)
    assert tested.returncode == 0, tested.stderr[-3000:]
    assert "Decoded " not in tested.stdout + tested.stderr  # the cache of the fit
    ddp_auroc = float(re.search(r"test/auroc\s+([0-9.]+)", tested.stdout).group(1))
    monkeypatch.chdir(tmp_path)
    last = run_folder(tmp_path, "folder_anomaly") / "checkpoints" / "last.ckpt"
    one = main(["test", *flags, f"--ckpt_path={last}"])
    assert ddp_auroc == pytest.approx(one.trainer.callback_metrics["test/auroc"].item(), abs=1e-6)
