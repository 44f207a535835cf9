"""Seconds per training epoch of the reference VAE: the conventional pipeline against the framework.

    python benchmarks/epoch_speed.py --data-dir ../shared/data                 # every setting, a table + JSON
    python benchmarks/epoch_speed.py --data-dir ../shared/data --batch-sizes 128 --backbones mlp

Pipelines, each in a fresh process (so peak memory is its own), all in one run so that their ratios hold on
a noisy machine:
  conventional  torchvision MNIST with ToTensor + Normalize per image, a DataLoader, a plain PyTorch loop
                (Adam, the same model and loss, the same 55000 training images)
  plain_resident  the floor: a plain PyTorch loop over the uint8 images kept on the device, a shuffled index
                per epoch, scaling per batch, fused Adam (no framework, no logging, no checkpoints)
  default       `cli.py fit --config configs/vae.yaml` with its defaults (logger, checkpoints, grids)
  fast          the same with the fast path: `--model.steps_per_call K` (K optimizer steps per Lightning step)
Timed: the training batches of each epoch after a warm-up epoch (validation and checkpoints excluded, for all
pipelines alike). Reported: seconds per epoch, images per second, peak memory (CUDA: max allocated; CPU:
peak resident set size of the process), the mean training loss of the last epoch, and the speed-up over the
conventional pipeline.
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
PIPELINES = ("conventional", "plain_resident", "default", "fast")


def device_of(accelerator: str) -> torch.device:
    if accelerator == "gpu" or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def conventional(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """What most tutorials write: per-image transforms in a DataLoader and a hand-written loop."""
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])  # [-1, 1]
    mnist = datasets.MNIST(args.data_dir, train=True, transform=transform)
    train = Subset(mnist, training_indices(len(mnist), args).tolist())
    loader = DataLoader(train, batch_size=args.batch_size, shuffle=True, pin_memory=device.type == "cuda")

    def epoch(_: int):
        for x, _ in loader:
            yield x.to(device, non_blocking=True)

    return plain_loop(args, device, epoch, fused=False)


def plain_resident(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """The floor any framework works against: resident uint8 images, fused Adam, nothing else."""
    from torchvision import datasets

    mnist = datasets.MNIST(args.data_dir, train=True)
    images = mnist.data[training_indices(len(mnist), args)].unsqueeze(1).to(device)  # uint8 (N, 1, 28, 28)
    generator = torch.Generator(device).manual_seed(42)

    def epoch(_: int):
        order = torch.randperm(len(images), generator=generator, device=device)
        for start in range(0, len(images), args.batch_size):
            yield images[order[start : start + args.batch_size]].float().div_(127.5).sub_(1)  # [-1, 1]

    return plain_loop(args, device, epoch, fused=True)


def training_indices(size: int, args: argparse.Namespace) -> torch.Tensor:
    """The framework's training split: the same seeded permutation, the first val_size held out."""
    return torch.randperm(size, generator=torch.Generator().manual_seed(42))[args.val_size :]


def plain_loop(args: argparse.Namespace, device: torch.device, epoch_batches, fused: bool) -> dict[str, Any]:
    """A hand-written training loop: the reference VAE, Adam lr 1e-3, over `epoch_batches(epoch)`."""
    from ae_lightning.autoencoders import VAE
    from ae_lightning.batch import Batch

    torch.manual_seed(42)
    model = VAE(backbone=args.backbone, value_range=(-1, 1), **conv_layers(args)).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused)
    seconds, losses = [], []
    for epoch in range(args.epochs + 1):
        total, batches = torch.zeros((), device=device), 0
        synchronize(device)
        start = time.perf_counter()
        for batch, x in enumerate(epoch_batches(epoch)):
            if args.limit_batches and batch >= args.limit_batches:
                break
            loss = model.loss_terms(Batch(x))["loss"].mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach()
            batches += 1
        synchronize(device)
        seconds.append(time.perf_counter() - start)
        losses.append((total / batches).item())
    return {"seconds": seconds[1:], "loss": losses[-1], "images": batches * args.batch_size}


def conv_layers(args: argparse.Namespace) -> dict[str, Any]:
    """The conv VAE's channels, the same in every pipeline."""
    return {"hidden_dims": [32, 64]} if args.backbone == "conv" else {}


class EpochTimer:
    """Times the training batches of each epoch and averages the training loss (kept on the device)."""

    def __init__(self, device: torch.device) -> None:
        from lightning.pytorch import Callback

        timer = self

        class _Callback(Callback):
            def on_train_epoch_start(self, trainer, pl_module) -> None:
                synchronize(device)
                timer.start = time.perf_counter()
                timer.total, timer.images = torch.zeros((), device=device), 0

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
                # one Batch, or with K steps per call a list of K of them
                images = sum(map(len, batch)) if isinstance(batch, list) else len(batch)
                timer.total += outputs["loss"].detach() * images  # the mean loss of the item's images
                timer.images += images

            def on_validation_epoch_start(self, trainer, pl_module) -> None:
                if not trainer.sanity_checking:
                    timer.stop()

            def on_train_epoch_end(self, trainer, pl_module) -> None:
                timer.stop()  # when there is no validation

        self.callback = _Callback()
        self.device = device
        self.seconds: list[float] = []
        self.losses: list[float] = []
        self.start: float | None = None

    def stop(self) -> None:
        if self.start is None:
            return
        synchronize(self.device)
        self.seconds.append(time.perf_counter() - self.start)
        self.losses.append((self.total / self.images).item())
        self.start = None


def framework(args: argparse.Namespace, device: torch.device, fast: bool) -> dict[str, Any]:
    """`cli.py fit --config configs/vae.yaml` as a user runs it, with a timing callback added."""
    from ae_lightning.cli import main

    flags = [
        "--config", str(REPO / "configs" / "vae.yaml"),
        f"--data.data_dir={args.data_dir}",
        f"--data.batch_size={args.batch_size}",
        f"--data.val_size={args.val_size}",
        f"--model.backbone={args.backbone}",
        f"--trainer.max_epochs={args.epochs + 1}",
        f"--trainer.accelerator={args.accelerator}",
        "--trainer.devices=1",  # one device, as the plain loops use
    ]  # fmt: skip
    if args.backbone == "conv":
        flags.append(f"--model.hidden_dims={conv_layers(args)['hidden_dims']}")
    if args.limit_batches:
        flags += [f"--trainer.limit_train_batches={args.limit_batches}", "--trainer.limit_val_batches=2"]
    if fast:
        flags += [f"--model.steps_per_call={args.steps_per_call}"]
    flags += args.extra
    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)  # runs/ of the benchmark go away with it
        cli = main(["--trainer.enable_progress_bar=false", *flags] if args.quiet else flags, run=False)
        timer = EpochTimer(device)
        cli.trainer.callbacks.append(timer.callback)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        os.chdir(REPO)
    return {"seconds": timer.seconds[1:], "loss": timer.losses[-1], "images": timer.images}


def run_one(args: argparse.Namespace) -> dict[str, Any]:
    device = device_of(args.accelerator)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if args.pipeline == "conventional":
        result = conventional(args, device)
    elif args.pipeline == "plain_resident":
        result = plain_resident(args, device)
    else:
        result = framework(args, device, fast=args.pipeline == "fast")
    seconds = sum(result["seconds"]) / len(result["seconds"])
    return {
        "pipeline": args.pipeline,
        "backbone": args.backbone,
        "batch_size": args.batch_size,
        "steps_per_call": args.steps_per_call if args.pipeline == "fast" else 1,
        "seconds_per_epoch": seconds,
        "images_per_second": result["images"] / seconds,
        "peak_memory_mb": peak_memory_mb(device),
        "final_train_loss": result["loss"],
        "epochs_timed": len(result["seconds"]),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{os.cpu_count()}",
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| backbone | batch | pipeline | s/epoch | images/s | peak MB | final loss | speed-up |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row['backbone']} | {row['batch_size']} | {row['pipeline']}"
            + (f" (K={row['steps_per_call']})" if row["pipeline"] == "fast" else "")
            + f" | {row['seconds_per_epoch']:.2f} | {row['images_per_second']:,.0f}"
            f" | {row['peak_memory_mb']:,.0f} | {row['final_train_loss']:.2f} | {row['speedup']:.2f}x |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", default="data", help="folder holding MNIST/raw/ (default: data)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--backbones", nargs="+", default=["mlp", "conv"], choices=["mlp", "conv"])
    parser.add_argument("--pipelines", nargs="+", default=list(PIPELINES), choices=PIPELINES)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs, after one warm-up epoch")
    parser.add_argument(
        "--val-size", type=int, default=5000, help="images held out of training (as the configs)"
    )
    parser.add_argument("--steps-per-call", type=int, default=16, help="K of the fast path")
    parser.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "gpu"])
    parser.add_argument("--limit-batches", type=int, default=0, help="batches per epoch (0: all); for tests")
    parser.add_argument("--out", default="benchmarks/results/epoch_speed.json", help="where the JSON goes")
    parser.add_argument("--quiet", action="store_true", help="no progress bar (the default pipeline has one)")
    parser.add_argument("--extra", nargs="*", default=[], help="more cli.py flags for default and fast")
    parser.add_argument("--pipeline", help=argparse.SUPPRESS)  # set for the child process of one setting
    parser.add_argument("--backbone", help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    args.data_dir = str(Path(args.data_dir).resolve())  # the framework's runs chdir into a temporary folder
    if args.pipeline:  # child: one setting, one JSON line on stdout
        print("RESULT " + json.dumps(run_one(args)), flush=True)
        return []
    rows = []
    for backbone in args.backbones:
        for batch_size in args.batch_sizes:
            for pipeline in args.pipelines:
                child = [
                    sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]),
                    f"--pipeline={pipeline}", f"--backbone={backbone}", f"--batch-size={batch_size}",
                ]  # fmt: skip
                done = subprocess.run(child, capture_output=True, text=True, cwd=REPO)
                results = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
                if done.returncode != 0 or not results:
                    sys.exit(f"{pipeline} {backbone} batch {batch_size} failed:\n{done.stderr[-3000:]}")
                rows.append(json.loads(results[-1].removeprefix("RESULT ")))
                print(f"{backbone} batch {batch_size} {pipeline}: {rows[-1]['seconds_per_epoch']:.2f} s")
            setting = rows[-len(args.pipelines) :]
            baseline = next((row for row in setting if row["pipeline"] == "conventional"), None)
            for row in setting:
                row["speedup"] = baseline["seconds_per_epoch"] / row["seconds_per_epoch"] if baseline else 1.0
    report = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__},
        "settings": {"epochs_timed": args.epochs, "data_dir": str(args.data_dir)},
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(rows))
    print(f"written to {out}")
    return rows


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
