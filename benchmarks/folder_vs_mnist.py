"""One-class anomaly detection on real MNIST digits two ways: the MNIST datamodule (28x28 gray) and the same
digits rendered as a 64x64 RGB one-class folder, with the same model; their test AUROCs should agree.

    python benchmarks/folder_vs_mnist.py --data-dir ../shared/data                 # digit 0 normal, 5 epochs
    python benchmarks/folder_vs_mnist.py --data-dir ../shared/data --normal 3 --epochs 10

The folder: root/train/good/ holds the normal digit's training images (the MNIST datamodule's train and
validation splits of it), root/test/good/ its test images, root/test/digit_<k>/ the other nine digits' test
images: each digit resized to 64x64 (bilinear) and drawn in orange on dark blue, saved as PNG. Both runs:
`cli.py fit` then `test`, the conv AE of configs/folder_anomaly.yaml (latent 32, channels 32-64-128, Adam
1e-3, batch 32), the threshold at the 95th percentile of the normal validation scores.
"""

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.folder_speed import cpu_name  # noqa: E402

#: the digit's colour and the background's, RGB
INK, PAPER = (255, 160, 40), (20, 30, 70)
MODEL = ["--model.latent_dim=32", "--model.backbone=conv", "--model.hidden_dims=[32, 64, 128]"]


def render_folder(data_dir: Path, root: Path, normal: int) -> Path:
    """Writes the one-class folder of the digit `normal` under `root` (once) and returns it."""
    import numpy as np
    from PIL import Image

    from ae_lightning.data import MNISTDataModule

    if (root / ".complete").is_file():
        return root
    mnist = MNISTDataModule(data_dir=data_dir, normal_classes=[normal], download=False, resident=False)
    mnist.prepare_data()
    mnist.setup("fit")
    ink, paper = np.array(INK, dtype=np.float32), np.array(PAPER, dtype=np.float32)
    parts = [("train", split) for split in ("train", "val")] + [("test", "test")]
    for folder, split in parts:
        dataset = mnist.datasets[split]
        for i, (digit, label) in enumerate(
            zip(dataset.images[:, 0].numpy(), dataset.labels.tolist(), strict=True)
        ):
            gray = np.asarray(Image.fromarray(digit).resize((64, 64), Image.BILINEAR), dtype=np.float32) / 255
            rgb = (paper + gray[..., None] * (ink - paper)).round().astype(np.uint8)
            name = "good" if label == normal else f"digit_{label}"
            target = root / folder / name
            target.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rgb).save(target / f"{split}_{i:05d}.png")
    (root / ".complete").write_text("")
    return root


@contextmanager
def chdir(folder: Path) -> Iterator[None]:
    """Runs the block in `folder` (contextlib.chdir needs Python 3.11)."""
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def fit_and_test(args: list[str], where: Path) -> tuple[float, float]:
    """`cli.py fit` then `test` (of last.ckpt) in `where`; (test AUROC, seconds)."""
    from ae_lightning.cli import main

    where.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with chdir(where):
        main(["fit", *args])
        tested = main(["test", *args, "--ckpt_path=last"])
    return tested.trainer.callback_metrics["test/auroc"].item(), time.perf_counter() - start


def compare(
    data_dir: Path, work: Path, normal: int, epochs: int, accelerator: str = "auto"
) -> dict[str, Any]:
    """The test AUROC of the same model on the MNIST datamodule and on the rendered folder."""
    root = render_folder(data_dir, work / f"digits_{normal}", normal)
    common = [*MODEL, f"--trainer.max_epochs={epochs}", f"--trainer.accelerator={accelerator}",
              "--trainer.devices=1", "--trainer.enable_progress_bar=false",
              "--data.batch_size=32"]  # fmt: skip
    mnist_auroc, mnist_seconds = fit_and_test(
        ["--config", str(REPO / "configs" / "anomaly.yaml"), f"--data.data_dir={data_dir}",
         "--data.download=false", f"--data.normal_classes=[{normal}]", *common],
        work / f"mnist_run_{normal}_{epochs}",
    )  # fmt: skip
    folder_auroc, folder_seconds = fit_and_test(
        ["--config", str(REPO / "configs" / "folder_anomaly.yaml"), f"--data.root={root}",
         f"--data.cache_dir={work / 'cache'}", *common],
        work / f"folder_run_{normal}_{epochs}",
    )  # fmt: skip
    return {
        "normal": normal,
        "epochs": epochs,
        "mnist_auroc": mnist_auroc,
        "folder_auroc": folder_auroc,
        "difference": folder_auroc - mnist_auroc,
        "mnist_seconds": mnist_seconds,
        "folder_seconds": folder_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, required=True, help="holds MNIST/raw/")
    parser.add_argument("--work", type=Path, default=Path("/tmp/ae_lightning_folder_vs_mnist"))
    parser.add_argument("--normal", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="JSON file (default: benchmarks/results/folder_vs_mnist_<normal>.json)",
    )
    args = parser.parse_args()
    sys.argv = sys.argv[:1]  # the CLI runs in this process: it takes its own argument lists only
    result = compare(args.data_dir.resolve(), args.work, args.normal, args.epochs)
    result["machine"] = f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}"
    if args.output is None:
        args.output = REPO / "benchmarks" / "results" / f"folder_vs_mnist_{args.normal}.json"
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
