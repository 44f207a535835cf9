"""Shared fixtures: tiny datasets in the real IDX format, so torchvision's own loading code runs."""

import struct
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

#: sizes of the tiny dataset: 96 training images (24 of them for validation) and 40 test images
NUM_TRAIN, NUM_TEST, VAL_SIZE = 96, 40, 24


def write_idx(path: Path, values: torch.Tensor) -> None:
    """Writes a uint8 tensor as an IDX file: magic 0x0000 08 <ndim>, big-endian dims, then the bytes."""
    header = bytes([0, 0, 0x08, values.ndim]) + struct.pack(f">{values.ndim}I", *values.shape)
    path.write_bytes(header + bytes(values.flatten().tolist()))


def tiny_digits(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` 28x28 uint8 images of 10 classes: a bright 8x8 square whose place depends on the class,
    over faint noise. Structured enough for an autoencoder to learn in a few steps."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % 10
    images = torch.randint(0, 40, (count, 28, 28), generator=generator)
    for i, label in enumerate(labels.tolist()):
        row, col = 2 + 8 * (label // 4), 2 + 6 * (label % 4)
        images[i, row : row + 8, col : col + 8] = torch.randint(200, 256, (8, 8), generator=generator)
    return images.to(torch.uint8), labels.to(torch.uint8)


def write_tiny_dataset(root: Path, name: str = "MNIST") -> Path:
    """Writes the four extracted IDX files under `root/<name>/raw` and returns `root`."""
    raw = root / name / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, count, seed in (("train", NUM_TRAIN, 0), ("t10k", NUM_TEST, 1)):
        images, labels = tiny_digits(count, seed)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


def write_tiny_data(root: Path) -> Path:
    """Writes tiny MNIST, FashionMNIST, KMNIST and CIFAR-10, and two folders of image files, `images/` (class
    folders) and `inspection/` (the one-class layout), under `root`; returns `root`."""
    from tests.images import write_class_folder, write_one_class_folder, write_tiny_cifar

    for name in ("MNIST", "FashionMNIST", "KMNIST"):
        write_tiny_dataset(root, name)
    write_class_folder(root / "images")
    write_one_class_folder(root / "inspection")
    write_tiny_cifar(root)
    return root


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny data of `write_tiny_data`, for the whole session. Read-only: copy before damaging."""
    return write_tiny_data(tmp_path_factory.mktemp("data"))


def read_png(path: Path) -> torch.Tensor:
    """Decodes a PNG (and so checks it is one) into a (C, H, W) uint8 tensor."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG"
        return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)


def linear_shapes(net: torch.nn.Module) -> list[tuple[int, int]]:
    """(in_features, out_features) of every Linear layer of `net`, in order."""
    return [(m.in_features, m.out_features) for m in net.modules() if isinstance(m, torch.nn.Linear)]


def grid_size(images: int, samples: int = 0, rows_per_image: int = 2, nrow: int = 8) -> tuple[int, int]:
    """(height, width) of a sample grid of 28x28 images: `rows_per_image` rows for each row of `nrow`
    images (input, reconstruction, ...), then a 6-pixel gap and the samples. make_grid pads by 2 pixels."""
    cell = 28 + 2
    height = rows_per_image * -(-images // nrow) * cell + 2
    if samples:
        height += 6 + -(-samples // nrow) * cell + 2
    return height, nrow * cell + 2


def tiny(data_dir: Path) -> list[str]:
    """Flags that shrink a config to the tiny dataset and a few batches on the CPU."""
    return [
        f"--data.data_dir={data_dir}",
        f"--data.val_size={VAL_SIZE}",
        "--data.batch_size=16",
        "--trainer.max_epochs=1",
        "--trainer.accelerator=cpu",
        "--trainer.log_every_n_steps=1",
        "--trainer.enable_progress_bar=false",
    ]


def tiny_folder(root: Path, cache_dir: Path) -> list[str]:
    """`tiny` for a config on a folder of images: the folder, a cache, 32x32 images, decoded in process."""
    mnist_only = ("--data.data_dir", "--data.val")
    return [
        f"--data.root={root}",
        f"--data.cache_dir={cache_dir}",
        "--data.image_size=32",
        "--data.decode_workers=0",
        *[flag for flag in tiny(root) if not flag.startswith(mnist_only)],
    ]


def tiny_for(config: Path, data_dir: Path) -> list[str]:
    """`tiny` for a config on MNIST; for a manifold config, a few hundred points and the same settings; for
    a folder config, the tiny image folder of its layout."""
    text = config.read_text()
    if "ae_lightning.data.ImageFolderDataModule" in text:
        folder = "inspection" if "one_class" in text else "images"
        return tiny_folder(data_dir / folder, data_dir / "cache")
    if "ae_lightning.data.ManifoldDataModule" not in text:
        return tiny(data_dir)
    points = ["--data.num_points=600", "--data.val_size=100", "--data.test_size=100"]
    mnist_only = ("--data.data_dir", "--data.val")
    return [*points, *[flag for flag in tiny(data_dir) if not flag.startswith(mnist_only)]]


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Runs the test in an empty folder, so `runs/` lands there as it would for a user."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_folder(root: Path, name: str, version: int = 0) -> Path:
    return root / "runs" / name / f"version_{version}"


#: what a run writes where it is started; tests run commands in a temporary folder, never in the checkout
_RUN_OUTPUTS = ("runs", "lightning_logs", "data", "wandb", "predictions.pt", "predictions.csv")


@pytest.fixture(autouse=True)
def _writes_nothing_into_the_checkout():
    """Fails a test that leaves run outputs in the repository (`make test` must leave `git status` clean)."""
    before = {name for name in _RUN_OUTPUTS if (REPO / name).exists()}
    yield
    left = sorted({name for name in _RUN_OUTPUTS if (REPO / name).exists()} - before)
    assert not left, (
        f"the test wrote {left} into the checkout {REPO}: run it in tmp_path (the in_tmp fixture)"
    )


def run_and_fail(args: list[str], capsys: pytest.CaptureFixture) -> str:
    """Runs the CLI, which must fail with one line on stderr (and a tip); returns that line."""
    from ae_lightning.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code not in (0, None)
    code = exit_info.value.code
    message = (code if isinstance(code, str) else "") + "\n" + capsys.readouterr().err
    lines = [line for line in message.splitlines() if line.strip() and not line.startswith("tip: ")]
    assert len(lines) == 1, lines  # a mistake in the arguments adds a tip line pointing at --help
    return lines[0]
