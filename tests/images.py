"""Folders of real image files (PNG, JPEG, gray and RGB, several sizes) made from the tiny digits."""

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tests.conftest import tiny_digits

#: a colour per class, so the RGB images differ in colour as well as in shape
TINTS = [(255, 80, 80), (80, 255, 80), (80, 80, 255), (255, 255, 80), (255, 80, 255)]
#: sizes the images are rendered at, in turn: larger and smaller than 32x32, square or not
SIZES = [(40, 40), (48, 36), (30, 44), (64, 64)]


def render(digit: torch.Tensor, label: int, i: int) -> Image.Image:
    """A 28x28 uint8 digit as an image of the i-th size of SIZES, in a tint of its class, saved gray for
    every third image."""
    height, width = SIZES[i % len(SIZES)]
    gray = Image.fromarray(digit.numpy()).resize((width, height), Image.BILINEAR)
    if i % 3 == 2:
        return gray
    tint = np.array(TINTS[label % len(TINTS)], dtype=np.float32) / 255
    rgb = (np.asarray(gray, dtype=np.float32)[..., None] * tint).astype(np.uint8)
    return Image.fromarray(rgb)


def save(image: Image.Image, folder: Path, i: int) -> Path:
    """Saves as PNG or (every other image) JPEG, named by i."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (f"{i:03d}.jpg" if i % 2 else f"{i:03d}.png")
    image.save(path, quality=95) if path.suffix == ".jpg" else image.save(path)
    return path


def write_class_folder(root: Path, count: int = 60, classes: int = 3, seed: int = 0) -> Path:
    """root/class_<k>/NNN.{png,jpg}: `count` digits of `classes` classes."""
    images, labels = tiny_digits(count, seed)
    for i, (digit, label) in enumerate(zip(images, labels.tolist(), strict=True)):
        label %= classes
        save(render(digit, label, i), root / f"class_{label}", i)
    return root


def write_one_class_folder(root: Path, train: int = 48, test: int = 60, normal: int = 0) -> Path:
    """root/train/good/ (digits of class `normal`), root/test/good/ and root/test/<defect>/ (two defects:
    the digits of classes 1 and 2)."""
    images, labels = tiny_digits(10 * train, seed=0)
    normal_images = images[labels == normal][:train]
    for i, digit in enumerate(normal_images):
        save(render(digit, normal, i), root / "train" / "good", i)
    images, labels = tiny_digits(test, seed=1)
    names = {normal: "good", 1: "scratch", 2: "dent"}
    for i, (digit, label) in enumerate(zip(images, labels.tolist(), strict=True)):
        if label in names:
            save(render(digit, label, i), root / "test" / names[label], i)
    return root


def write_tiny_cifar(root: Path, per_batch: int = 20, test: int = 40) -> Path:
    """root/cifar-10-batches-py/ in CIFAR-10's own format: pickled dicts (protocol 2, as the originals)
    of b"data" (N, 3072) uint8 rows (the red plane, then green, then blue) and b"labels", made from the
    tiny digits tinted by class; five training batches of `per_batch` images and a test batch."""
    import pickle

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]
    for seed, name in enumerate(names):
        digits, labels = tiny_digits(test if name == "test_batch" else per_batch, seed)
        images = [np.asarray(render(digit, label, 0).resize((32, 32)).convert("RGB")) for digit, label in
                  zip(digits, labels.tolist(), strict=True)]  # fmt: skip
        data = np.stack(images).transpose(0, 3, 1, 2).reshape(len(images), 3072)
        content = {b"batch_label": name.encode(), b"labels": labels.tolist(), b"data": data,
                   b"filenames": [f"{i}.png".encode() for i in range(len(images))]}  # fmt: skip
        with open(folder / name, "wb") as file:
            pickle.dump(content, file, protocol=2)
    return root
