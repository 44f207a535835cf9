"""The first GPU run, as one script: what a GPU changes, checked in order of value, its JSON written after
every check (a run cut short still reports what it did).

    python benchmarks/device_check.py --out device_check.json     # one H100: about 5 minutes
    python benchmarks/device_check.py --out /tmp/device_check.json  # a CPU: its CPU part, under 2 minutes

Every check is "pass", "fail" (with the reason and the figures) or "skip" (with why: no GPU, no second GPU,
the time budget spent). The data is written on the spot: tiny MNIST, folder and CIFAR-10 files in the real
formats (tests/conftest.py, tests/images.py), a 60000-image synthetic MNIST for the speed rows.

  syncs         training steps after the first call, validation and test batches of every config at K = 1 and
                8 under torch.cuda.set_sync_debug_mode("warn"): 0 waits expected (GPU)
  precision     bf16-mixed and 16-mixed (GradScaler; on a CPU through Lightning's MixedPrecision plugin):
                val/loss within 5% of 32-true, the scaler's state in the checkpoint and a resume from it
  resume        3 epochs against 1 + `fit --ckpt_path last` to 3, at K = 1 and 4: the same weights, to the bit
                (deterministic), VAE noise and dynamic binarisation included (the GPU's own generator)
  device_moves  a GPU-trained checkpoint tested on the CPU (the same test/loss) and resumed there, and that
                checkpoint resumed on the GPU (GPU)
  parity        predict (resident data, on the device), export (TorchScript; ONNX where installed) and score:
                the same anomaly scores
  epoch_speed   benchmarks/epoch_speed.py's rows: conventional, plain resident, default and fast pipelines,
                MLP and conv, batch 1024 (on a CPU: MLP, batch 128, 20 batches)
  other_data    tiny image-folder (one-class layout) and CIFAR-10 fits
  ddp_*         with 2 GPUs or more: 2 devices equal to 1 (SGD), a 2-device resume to the bit, K = 4 equal to
                K = 1 under DDP, the NaN stop under NCCL, and a killed rank ending the job

On a device machine of this workplace, which lacks jsonargparse and wandb, carry them as wheels (see
/work/.library/device/README.md), then run it in one call.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lightning.pytorch import Callback  # noqa: E402

from ae_lightning.cli import main as cli  # noqa: E402
from ae_lightning.cli.setup import prepare_fit  # noqa: E402
from benchmarks.folder_vs_mnist import chdir  # noqa: E402
from tests.conftest import CONFIGS, tiny_digits, tiny_for, write_idx, write_tiny_data  # noqa: E402

#: what torch's sync debug mode warns
SYNC_WARNING = "called a synchronizing CUDA operation"


class Skip(Exception):
    """A check that cannot run here; its message says why."""


class Check:
    """Runs the checks in order, each in its own folder, and writes the report after each."""

    def __init__(self, out: Path, work: Path, budget: float, accelerator: str) -> None:
        self.out, self.work, self.budget, self.accelerator = out, work, budget, accelerator
        self.start = time.monotonic()
        self.gpus = torch.cuda.device_count() if accelerator != "cpu" else 0
        self.report: dict[str, Any] = {"machine": machine(), "checks": {}}
        self.only: list[str] | None = None

    def run(self, name: str, check: Callable[..., dict[str, Any]], needs_gpus: int = 0) -> None:
        if self.only is not None and name not in self.only:
            return
        began = time.monotonic()
        try:
            if self.gpus < needs_gpus:
                raise Skip(f"needs {needs_gpus} GPU(s), this machine has {self.gpus}")
            if began - self.start > self.budget:
                raise Skip(f"the time budget ({self.budget:.0f} s) is spent")
            folder = self.work / name
            folder.mkdir(parents=True)
            with chdir(folder), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = {"status": "pass", **check(self, folder)}
        except Skip as why:
            result = {"status": "skip", "why": str(why)}
        except Exception as err:  # a check that breaks is reported, and the next one runs
            result = {"status": "fail", "error": f"{type(err).__name__}: {err}"[:2000]}
            result["traceback"] = traceback.format_exc()[-3000:]
        except SystemExit as err:  # the CLI's one-line errors
            result = {"status": "fail", "error": str(err.code)[:2000]}
        result["seconds"] = round(time.monotonic() - began, 1)
        self.report["checks"][name] = result
        self.report["seconds"] = round(time.monotonic() - self.start, 1)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(self.report, indent=2) + "\n")
        print(
            f"{name}: {result['status']} ({result['seconds']} s) {result.get('why', result.get('error', ''))}"
        )

    @property
    def data(self) -> Path:
        """Tiny MNIST (and its siblings), an image folder of each layout and tiny CIFAR-10."""
        root = self.work / "data"
        return root if root.exists() else write_tiny_data(root)

    def flags(self, config: str, *extra: str) -> list[str]:
        """A config shrunk to the tiny data, on this check's accelerator."""
        path = CONFIGS / config
        tiny = tiny_for(path, self.data)
        return ["--config", str(path), *tiny, f"--trainer.accelerator={self.accelerator}",
                "--trainer.log_every_n_steps=1000", *extra]  # fmt: skip

    def failed(self, condition: bool, what: str, **figures: Any) -> None:
        if not condition:
            raise AssertionError(f"{what}: {figures}")


def machine() -> dict[str, Any]:
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__, "gpus": gpus}


def last(name: str, version: int = 0) -> Path:
    return Path("runs") / name / f"version_{version}" / "checkpoints" / "last.ckpt"


def weights_differ(first: Path, second: Path) -> float:
    """The largest difference of any weight between two checkpoints."""
    a, b = (torch.load(path, map_location="cpu", weights_only=True)["state_dict"] for path in (first, second))
    return max((a[name].float() - b[name].float()).abs().max().item() for name in a)


# --- the checks, in order of value ---


class SyncWatch(Callback):
    """Turns the sync debug mode on over the training steps after the first call (the fetching between them
    included) and over validation and test batches, and counts what it warns, by stage."""

    def __init__(self, caught: list) -> None:
        self.caught, self.calls, self.stage, self.counts = caught, 0, None, {"train": 0, "val": 0, "test": 0}

    def _on(self, stage: str) -> None:
        self.stage, self.before = stage, len(self.caught)
        torch.cuda.set_sync_debug_mode("warn")

    def _off(self, *args: Any) -> None:
        if self.stage is not None:
            torch.cuda.set_sync_debug_mode("default")
            found = [w for w in self.caught[self.before :] if SYNC_WARNING in str(w.message)]
            self.counts[self.stage] += len(found)
            self.examples = getattr(self, "examples", []) + [str(w.message)[:300] for w in found[:2]]
            self.stage = None

    def on_train_batch_start(self, *args: Any) -> None:
        self.calls += 1
        if self.calls > 1 and self.stage is None:
            self._on("train")

    def on_validation_batch_start(self, *args: Any) -> None:
        self._on("val")

    def on_test_batch_start(self, *args: Any) -> None:
        self._on("test")

    on_validation_batch_end = on_test_batch_end = on_validation_start = on_train_epoch_end = _off


def syncs(check: Check, folder: Path) -> dict[str, Any]:
    """No step waits for the device, in any config, at K = 1 and 8."""
    counts = {}
    for config in sorted(path.name for path in CONFIGS.glob("*.yaml")):
        for k in (1, 8):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                run = cli(
                    check.flags(config, "--trainer.max_epochs=3", f"--model.steps_per_call={k}"), run=False
                )
                prepare_fit(run.trainer, run.model)  # as `fit` does
                watch = SyncWatch(caught)
                run.trainer.callbacks.insert(0, watch)
                run.trainer.fit(run.model, datamodule=run.datamodule)
                run.trainer.test(run.model, datamodule=run.datamodule, verbose=False)
            counts[f"{config} K={k}"] = {**watch.counts, "examples": getattr(watch, "examples", [])}
    waiting = {
        name: count for name, count in counts.items() if any(count[s] for s in ("train", "val", "test"))
    }
    check.failed(not waiting, "steps that wait for the device", **waiting)
    return {"configs": len(counts), "waits": 0}


def precision(check: Check, folder: Path) -> dict[str, Any]:
    """bf16-mixed and 16-mixed train as well as 32-true; 16-mixed's GradScaler is saved and resumed."""
    fp16 = "16-mixed" if check.gpus else json.dumps(
        {"class_path": "lightning.pytorch.plugins.precision.MixedPrecision",
         "init_args": {"precision": "16-mixed", "device": "cpu"}})  # fmt: skip
    settings = {
        "32-true": ["--trainer.precision=32-true"],
        "bf16-mixed": ["--trainer.precision=bf16-mixed"],
        "16-mixed": [f"--trainer.plugins={fp16}" if not check.gpus else "--trainer.precision=16-mixed"],
    }
    losses, scales = {}, {}
    for version, (name, flags) in enumerate(settings.items()):
        fitted = cli(["fit", *check.flags("vae.yaml", "--trainer.max_epochs=6", *flags)])
        losses[name] = fitted.trainer.callback_metrics["val/loss"].item()
        scales[name] = torch.load(last("vae", version), weights_only=True).get("MixedPrecision")
    resumed = cli(["fit", *check.flags("vae.yaml", "--trainer.max_epochs=7", *settings["16-mixed"]),
                   f"--ckpt_path={last('vae', 2)}"])  # fmt: skip
    figures = {
        "val_loss": losses,
        "grad_scaler": scales["16-mixed"],
        "resumed_step": resumed.trainer.global_step,
    }
    check.failed(scales["16-mixed"] is not None and "scale" in scales["16-mixed"], "no GradScaler", **figures)
    for name in ("bf16-mixed", "16-mixed"):
        check.failed(
            abs(losses[name] / losses["32-true"] - 1) <= 0.05, f"{name} val/loss off by > 5%", **figures
        )
    check.failed(resumed.trainer.global_step == 35, "resume from the 16-mixed checkpoint", **figures)
    return figures


def resume(check: Check, folder: Path) -> dict[str, Any]:
    """1 epoch + resume to 3 equals 3 epochs, to the bit."""
    differences = {}
    for k in (1, 4):
        flags = check.flags("vae.yaml", "--data.value_range=[0, 1]", "--data.binarize=true",
                            "--trainer.deterministic=true", f"--model.steps_per_call={k}")  # fmt: skip
        for run in ("unbroken", "resumed"):
            (folder / f"k{k}" / run).mkdir(parents=True)
        with chdir(folder / f"k{k}" / "unbroken"):
            cli(["fit", *flags, "--trainer.max_epochs=3"])
        with chdir(folder / f"k{k}" / "resumed"):
            cli(["fit", *flags, "--trainer.max_epochs=1"])
            cli(["fit", *flags, "--trainer.max_epochs=3", "--ckpt_path=last"])
        differences[f"K={k}"] = weights_differ(folder / f"k{k}" / "unbroken" / last("vae"),
                                               folder / f"k{k}" / "resumed" / last("vae"))  # fmt: skip
    check.failed(all(value == 0 for value in differences.values()), "resume not exact", **differences)
    return {"largest_weight_difference": differences}


def device_moves(check: Check, folder: Path) -> dict[str, Any]:
    """A GPU checkpoint tested and resumed on the CPU, and the CPU's resumed on the GPU."""
    cli(["fit", *check.flags("vae.yaml", "--trainer.max_epochs=1")])
    gpu_ckpt = last("vae").resolve()
    on_gpu = cli(["test", *check.flags("vae.yaml"), f"--ckpt_path={gpu_ckpt}"])
    cpu_flags = [*check.flags("vae.yaml"), "--trainer.accelerator=cpu"]
    on_cpu = cli(["test", *cpu_flags, f"--ckpt_path={gpu_ckpt}"])
    cli(["fit", *cpu_flags, "--trainer.max_epochs=2", f"--ckpt_path={gpu_ckpt}"])
    back = cli(
        ["fit", *check.flags("vae.yaml", "--trainer.max_epochs=3"), f"--ckpt_path={last('vae', 3).resolve()}"]
    )
    runs = {"gpu": on_gpu, "cpu": on_cpu}
    # test/mse (of the decoded posterior mean) is a function of the weights alone: test/loss draws posterior
    # noise, from the GPU's generator on one side and the CPU's on the other
    losses = {name: run.trainer.callback_metrics["test/mse"].item() for name, run in runs.items()}
    check.failed(
        abs(losses["gpu"] - losses["cpu"]) <= 1e-3 * abs(losses["gpu"]), "test/mse differs", **losses
    )
    check.failed(back.trainer.global_step == 15, "resume on the GPU", step=back.trainer.global_step)
    return {"test_mse": losses}


def parity(check: Check, folder: Path) -> dict[str, Any]:
    """Predict on the device, export and score: the same anomaly scores."""
    from ae_lightning.export.score import score

    flags = check.flags("anomaly.yaml")
    cli(["fit", *flags])
    cli(["predict", *flags, "--ckpt_path=last"])
    predicted = torch.load(Path("runs/anomaly/version_1/predictions.pt"))["anomaly_score"]
    formats = ["torchscript"]
    try:
        import onnxruntime  # noqa: F401

        formats.append("onnx")
    except ImportError:
        pass
    largest = {}
    for form in formats:
        cli(["export", *flags, "--ckpt_path=last", f"--format={form}", f"--output=exported_{form}"])
        score(Path(f"exported_{form}"), check.data / "MNIST/raw/t10k-images-idx3-ubyte", Path(f"{form}.csv"))
        rows = Path(f"{form}.csv").read_text().splitlines()[1:]
        scores = torch.tensor([float(row.split(",")[1]) for row in rows], dtype=torch.float64)
        largest[form] = ((scores - predicted.double()).abs() / predicted.double().abs()).max().item()
    check.failed(all(value <= 1e-4 for value in largest.values()), "scores differ", **largest)
    return {"largest_relative_difference": largest, "images": len(predicted)}


def epoch_speed(check: Check, folder: Path) -> dict[str, Any]:
    """The speed table's rows on this machine (a synthetic MNIST of 60000 images)."""
    raw = folder / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, count, seed in (("train", 60000, 0), ("t10k", 10000, 1)):
        images, labels = tiny_digits(count, seed)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    gpu = check.gpus > 0
    settings = (
        ["--batch-sizes", "1024", "--epochs=1"]
        if gpu
        else [
            "--batch-sizes",
            "128",
            "--backbones",
            "mlp",
            "--epochs=1",
            "--limit-batches=20",
            "--val-size=59000",
        ]
    )
    out = folder / "epoch_speed.json"
    command = [sys.executable, str(REPO / "benchmarks" / "epoch_speed.py"), f"--data-dir={folder}", *settings,
               f"--accelerator={check.accelerator}", "--quiet", f"--out={out}"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    check.failed(done.returncode == 0, "epoch_speed.py failed", stderr=done.stderr[-2000:])
    return {"rows": json.loads(out.read_text())["rows"]}


def other_data(check: Check, folder: Path) -> dict[str, Any]:
    results = {}
    for config in ("folder_anomaly.yaml", "cifar10.yaml"):
        fitted = cli(["fit", *check.flags(config, "--trainer.max_epochs=2")])
        tested = cli(["test", *check.flags(config), "--ckpt_path=last"])
        results[config] = {
            name: tested.trainer.callback_metrics[name].item() for name in ("test/loss", "test/mse")
        }
        check.failed(fitted.trainer.global_step > 0, f"{config} did not train")
    return results


# --- with two GPUs or more: the real command, in processes ---


def command(check: Check, args: list[str], folder: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, str(REPO / "cli.py"), *args], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def ddp_flags(check: Check, *extra: str, config: str = "vae.yaml") -> list[str]:
    return [*check.flags(config), "--config", str(CONFIGS / "trainer/ddp.yaml"), "--trainer.devices=2",
            "--trainer.deterministic=true", *extra]  # fmt: skip


def ddp_equals_one_device(check: Check, folder: Path) -> dict[str, Any]:
    """2 devices x 36 images and 1 x 72, plain SGD: the same weights; K = 4 equals K = 1 under DDP."""
    sgd = ["--model.optimizer=torch.optim.SGD", "--model.optimizer.lr=0.5", "--trainer.max_epochs=2"]
    runs = {
        "ddp": ddp_flags(check, *sgd, "--data.batch_size=36", config="ae.yaml"),
        "one": [*check.flags("ae.yaml"), *sgd, "--data.batch_size=72", "--trainer.deterministic=true"],
        "ddp_k4": ddp_flags(
            check, "--data.batch_size=12", "--model.steps_per_call=4", "--trainer.max_epochs=2"
        ),
        "ddp_k1": ddp_flags(check, "--data.batch_size=12", "--trainer.max_epochs=2"),
    }
    for name, flags in runs.items():
        (folder / name).mkdir()
        done = command(check, ["fit", *flags], folder / name)
        check.failed(done.returncode == 0, f"{name} failed", stderr=done.stderr[-2000:])
    one_vs_two = weights_differ(folder / "ddp" / last("ae"), folder / "one" / last("ae"))
    k4_vs_k1 = weights_differ(folder / "ddp_k4" / last("vae"), folder / "ddp_k1" / last("vae"))
    check.failed(one_vs_two <= 1e-5 and k4_vs_k1 <= 1e-5, "DDP differs", one_vs_two=one_vs_two, k4=k4_vs_k1)
    return {"two_devices_vs_one": one_vs_two, "k4_vs_k1": k4_vs_k1}


def ddp_resume(check: Check, folder: Path) -> dict[str, Any]:
    flags = ddp_flags(check, "--data.batch_size=12", "--data.value_range=[0, 1]", "--data.binarize=true")
    for name in ("unbroken", "resumed"):
        (folder / name).mkdir()
    runs = [
        command(check, ["fit", *flags, "--trainer.max_epochs=3"], folder / "unbroken"),
        command(check, ["fit", *flags, "--trainer.max_epochs=1"], folder / "resumed"),
        command(check, ["fit", *flags, "--trainer.max_epochs=3", "--ckpt_path=last"], folder / "resumed"),
    ]
    for done in runs:
        check.failed(done.returncode == 0, "a run failed", stderr=done.stderr[-2000:])
    difference = weights_differ(folder / "unbroken" / last("vae"), folder / "resumed" / last("vae"))
    check.failed(difference == 0, "2-device resume not exact", difference=difference)
    return {"largest_weight_difference": difference}


def ddp_faults(check: Check, folder: Path) -> dict[str, Any]:
    """The NaN stop on every rank, and a killed rank ending the job within the step watchdog's limit."""
    blow_up = "--model.lr_scheduler=" + json.dumps(
        {
            "class_path": "torch.optim.lr_scheduler.MultiStepLR",
            "init_args": {"milestones": [1], "gamma": 1e13},
        }
    )
    nan = command(check, ["fit", *ddp_flags(check, "--trainer.max_epochs=3", blow_up)], folder)
    check.failed(
        nan.returncode == 1 and "became NaN or infinite" in nan.stderr, "NaN stop", stderr=nan.stderr[-2000:]
    )
    start = time.monotonic()
    crash = json.dumps({"class_path": "tests.callbacks.CrashRank", "init_args": {"step": 2, "rank": 1}})
    flags = ddp_flags(check, "--trainer.max_epochs=50", "--step_watchdog.minutes=0.5")
    killed = command(check, ["fit", *flags, f"--trainer.callbacks+={crash}"], folder, timeout=180)
    seconds = time.monotonic() - start
    check.failed(
        killed.returncode != 0 and seconds < 120, "a killed rank did not end the job", seconds=seconds
    )
    return {"killed_rank_ended_the_job_in_s": round(seconds, 1)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("device_check.json"), help="the JSON report")
    parser.add_argument("--budget", type=float, default=270, help="seconds after which the rest is skipped")
    parser.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "gpu"])
    parser.add_argument("--only", nargs="+", default=None, help="run these checks only (a rerun)")
    # the two-device checks on two CPU processes (gloo), to try them where there is no second GPU
    parser.add_argument("--ddp-on-cpu", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    accelerator = "gpu" if args.accelerator == "auto" and torch.cuda.is_available() else args.accelerator
    accelerator = "cpu" if accelerator == "auto" else accelerator
    with tempfile.TemporaryDirectory() as work:
        check = Check(args.out.resolve(), Path(work), args.budget, accelerator)
        check.only = args.only
        ddp_gpus = 0 if args.ddp_on_cpu else 2
        check.run("syncs", syncs, needs_gpus=1)
        check.run("precision", precision)
        check.run("resume", resume)
        check.run("device_moves", device_moves, needs_gpus=1)
        check.run("parity", parity)
        check.run("epoch_speed", epoch_speed)
        check.run("other_data", other_data)
        check.run("ddp_equals_one_device", ddp_equals_one_device, needs_gpus=ddp_gpus)
        check.run("ddp_resume", ddp_resume, needs_gpus=ddp_gpus)
        check.run("ddp_faults", ddp_faults, needs_gpus=ddp_gpus)
    failed = [name for name, result in check.report["checks"].items() if result["status"] == "fail"]
    print(f"{len(failed)} failed{': ' + ', '.join(failed) if failed else ''}; report in {args.out}")
    return check.report


if __name__ == "__main__":
    sys.exit(1 if [r for r in main()["checks"].values() if r["status"] == "fail"] else 0)
