"""A folder of 10,000 64x64 RGB images: decode-and-cache time and training images/s, the folder datamodule
against torchvision's ImageFolder + DataLoader with the same transforms.

    python benchmarks/folder_speed.py --data-dir ../shared/data                 # real MNIST digits, in colour
    python benchmarks/folder_speed.py --count 500 --epochs 1                    # quick, on random images

The folder (made once under --root): `--count` images in 10 class folders, PNG, 64x64 RGB, made from real
MNIST digits rendered larger and tinted by class when --data-dir holds MNIST, else random blobs. Measured:
  folder_cold   ImageFolderDataModule's first `prepare_data` + `setup`: every file decoded, resized, cached
  folder_warm   the same on a second datamodule: the cache read back, nothing decoded
  folder        training images/s of a plain loop (the conv AE of configs/folder.yaml, Adam) over the
                datamodule's resident batches, after a warm-up epoch
  imagefolder   the same loop over torchvision ImageFolder (PIL decode, Resize, CenterCrop, ToTensor per
                image) in a DataLoader with --workers workers, shuffled, the same batch size
"loader alone" is the same pass with no model: what the data path can deliver.
"""

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TINTS = [(255, 90, 90), (90, 255, 90), (90, 90, 255), (255, 255, 90), (255, 90, 255), (90, 255, 255),
         (255, 170, 60), (170, 90, 255), (200, 200, 200), (120, 200, 90)]  # fmt: skip


def cpu_name() -> str:
    """The processor's model name (Linux), else what platform knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def make_folder(root: Path, count: int, data_dir: Path | None) -> Path:
    """root/class_<k>/<i>.png, `count` 64x64 RGB images (made once; kept for later runs)."""
    import numpy as np
    from PIL import Image

    marker = root / f".complete-{count}"
    if marker.is_file():
        return root
    mnist = data_dir is not None and (data_dir / "MNIST" / "raw").is_dir()
    if mnist:
        from torchvision.datasets import MNIST

        digits = MNIST(str(data_dir), train=True, download=True)
        images, labels = digits.data[:count].numpy(), digits.targets[:count].tolist()
    else:
        generator = np.random.default_rng(0)
        images = (generator.random((count, 28, 28)) ** 4 * 255).astype(np.uint8)
        labels = [i % 10 for i in range(count)]
    for i, (digit, label) in enumerate(zip(images, labels, strict=True)):
        gray = np.asarray(Image.fromarray(digit).resize((64, 64), Image.BILINEAR), dtype=np.float32)
        rgb = (gray[..., None] * np.array(TINTS[label], dtype=np.float32) / 255).astype(np.uint8)
        folder = root / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(folder / f"{i:05d}.png")
    marker.write_text("")
    return root


def model_and_optimizer(image_shape: tuple[int, ...]) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    from ae_lightning.autoencoders import AE

    torch.manual_seed(0)
    model = AE(latent_dim=64, backbone="conv", hidden_dims=[32, 64, 128], image_shape=image_shape)
    return model, torch.optim.Adam(model.parameters(), lr=1e-3)


def images_per_second(batches: Any, epochs: int, image_shape: tuple[int, ...]) -> dict[str, float]:
    """Trains the conv AE over `batches()` (an iterable of Batch per call) for a warm-up and `epochs` timed
    epochs; images/s of the timed ones and the last epoch's mean loss."""
    model, optimizer = model_and_optimizer(image_shape)
    model.train()
    seen, seconds, losses = 0, 0.0, []
    for epoch in range(epochs + 1):
        start, epoch_losses, count = time.perf_counter(), [], 0
        for batch in batches():
            loss = model.loss_terms(batch)["loss"].mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            epoch_losses.append(loss.detach())
            count += len(batch)
        if epoch > 0:  # the first epoch warms up (and, for the ImageFolder loader, starts its workers)
            seconds += time.perf_counter() - start
            seen += count
            losses = epoch_losses
    return {"images_per_second": seen / seconds, "final_train_loss": torch.stack(losses).mean().item()}


def loader_images_per_second(batches: Any, epochs: int) -> float:
    """Images/s of reading `batches()` alone (no model), over `epochs` passes after a warm-up pass."""
    seen, start = 0, 0.0
    for epoch in range(epochs + 1):
        if epoch == 1:
            start = time.perf_counter()
        for batch in batches():
            batch.inputs.sum()  # touch the pixels
            seen += len(batch) if epoch > 0 else 0
    return seen / (time.perf_counter() - start)


def folder_pipeline(args: argparse.Namespace, root: Path) -> list[dict[str, Any]]:
    from ae_lightning.data import ImageFolderDataModule

    cache = args.cache_dir / f"run-{os.getpid()}"

    def datamodule() -> tuple[ImageFolderDataModule, float]:
        start = time.perf_counter()
        module = ImageFolderDataModule(
            root, image_size=64, cache_dir=cache, decode_workers=args.workers, batch_size=args.batch_size,
            val_fraction=0.05, test_fraction=0.05,
        )  # fmt: skip
        module.prepare_data()
        module.setup("fit")
        return module, time.perf_counter() - start

    cold, cold_seconds = datamodule()
    warm, warm_seconds = datamodule()
    images = sum(len(dataset) for dataset in cold.datasets.values())
    training = images_per_second(warm.train_dataloader, args.epochs, warm.image_shape)
    training["loader_images_per_second"] = loader_images_per_second(warm.train_dataloader, args.epochs)
    for path in cache.glob("*"):
        path.unlink()
    cache.rmdir()
    return [
        {"pipeline": "folder_cold", "seconds": cold_seconds, "images": images},
        {"pipeline": "folder_warm", "seconds": warm_seconds, "images": images},
        {"pipeline": "folder", "train_images": len(warm.datasets["train"]), **training},
    ]


def imagefolder_pipeline(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    from ae_lightning.batch import Batch

    transform = transforms.Compose([transforms.Resize(64), transforms.CenterCrop(64), transforms.ToTensor()])
    dataset = datasets.ImageFolder(str(root), transform=transform)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                        persistent_workers=args.workers > 0)  # fmt: skip

    def batches():
        for x, y in loader:
            yield Batch(x, y)

    return {"pipeline": "imagefolder", "train_images": len(dataset),
            **images_per_second(batches, args.epochs, (3, 64, 64)),
            "loader_images_per_second": loader_images_per_second(batches, args.epochs)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="holds MNIST/raw/ (else random images)")
    parser.add_argument("--root", type=Path, default=Path("/tmp/ae_lightning_folder_benchmark"))
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/ae_lightning_folder_benchmark_cache"))
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs, after one warm-up epoch")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="decode / loader workers")
    parser.add_argument(
        "--output", type=Path, default=REPO / "benchmarks" / "results" / "folder_speed_cpu.json"
    )
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    root = make_folder(args.root / str(args.count), args.count, args.data_dir)
    rows = [*folder_pipeline(args, root), imagefolder_pipeline(args, root)]
    speed = {row["pipeline"]: row.get("images_per_second") for row in rows}
    result = {
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "count": args.count, "batch_size": args.batch_size, "epochs": args.epochs, "workers": args.workers,
        "rows": rows, "training_speedup": speed["folder"] / speed["imagefolder"],
    }  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    print("| pipeline | seconds | training images/s | loader alone, images/s | final loss |")
    print("|---|---|---|---|---|")
    for row in rows:
        cells = [f"{row[key]:{form}}" if key in row else "" for key, form in
                 (("seconds", ".2f"), ("images_per_second", ".0f"), ("loader_images_per_second", ".0f"),
                  ("final_train_loss", ".1f"))]  # fmt: skip
        print(f"| {row['pipeline']} | {' | '.join(cells)} |")
    print(f"training speed-up of the folder datamodule over ImageFolder: {result['training_speedup']:.2f}x")


if __name__ == "__main__":
    main()
