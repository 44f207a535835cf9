"""Image files: found in a folder, decoded with torchvision's image I/O, fitted to a size and mode."""

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms import InterpolationMode

#: the files taken as images (by suffix, any case); others are ignored
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")

Resize = Literal["crop", "pad", "stretch"]
RESIZE_MODES: tuple[str, ...] = ("crop", "pad", "stretch")
#: how pixels are resampled: `bilinear` (antialiased) for images, `nearest` for masks (values are kept)
Interpolation = Literal["bilinear", "nearest"]


def image_files(folder: Path) -> list[Path]:
    """The image files under `folder`, in its subfolders too, sorted by path; hidden files and folders are
    skipped."""
    found = []
    for parent, folders, files in os.walk(folder, followlinks=True):
        folders[:] = [name for name in folders if not name.startswith(".")]
        found += [
            Path(parent, name)
            for name in files
            if not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES)
        ]
    return sorted(found)


def read_image(path: Path, channels: int) -> Tensor:
    """Decodes an image file to uint8 (channels, H, W): gray, palette, alpha and 16-bit images are
    converted; EXIF orientation is applied. Raises an error (OSError, RuntimeError, ValueError) for a
    file that is not a readable image."""
    suffix = path.suffix.lower()
    if suffix == ".bmp":  # torchvision decodes PNG, JPEG, WebP and GIF; PIL reads the rest
        return _read_with_pil(path, channels)
    # torchvision's WebP decoder cannot give gray: it decodes RGB, converted below
    gray = channels == 1 and suffix != ".webp"
    mode = ImageReadMode.GRAY if gray else ImageReadMode.RGB
    image = decode_image(read_file(str(path)), mode=mode, apply_exif_orientation=True)
    if image.dtype != torch.uint8:  # 16-bit PNG
        image = TF.to_dtype(image, torch.uint8, scale=True)
    if image.shape[0] != channels:
        image = TF.rgb_to_grayscale(image[:3]) if channels == 1 else image[:1].expand(3, -1, -1)
    return image.contiguous()


def _read_with_pil(path: Path, channels: int) -> Tensor:
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        array = np.asarray(image.convert("L" if channels == 1 else "RGB"))
    return torch.from_numpy(array.copy()).reshape(*array.shape[:2], channels).permute(2, 0, 1).contiguous()


def fit_to_size(
    image: Tensor, size: Sequence[int], resize: Resize, interpolation: Interpolation = "bilinear"
) -> Tensor:
    """Resizes a (C, h, w) uint8 image to (C, H, W) = (C, *size): `bilinear` (antialiased), or `nearest`
    (pixel-centre aligned like bilinear, so a mask stays on its image; no new values).

    `crop` keeps the aspect ratio: scaled until it covers H x W, then the centre is cut out. `pad` keeps
    the aspect ratio: scaled until it fits inside H x W, then centred on black (0). `stretch` scales each
    side on its own (the aspect ratio changes)."""
    height, width = size
    h, w = image.shape[-2:]
    if (h, w) == (height, width):
        return image
    if interpolation == "nearest":
        mode, antialias = InterpolationMode.NEAREST_EXACT, False
    else:
        mode, antialias = InterpolationMode.BILINEAR, True
    if resize == "stretch":
        return TF.resize(image, [height, width], interpolation=mode, antialias=antialias)
    cover = resize == "crop"
    scale = max(height / h, width / w) if cover else min(height / h, width / w)
    scaled = [max(1, round(h * scale)), max(1, round(w * scale))]
    if cover:  # rounding may leave one pixel short
        scaled = [max(scaled[0], height), max(scaled[1], width)]
    else:
        scaled = [min(scaled[0], height), min(scaled[1], width)]
    image = TF.resize(image, scaled, interpolation=mode, antialias=antialias)
    if cover:
        return TF.center_crop(image, [height, width])
    top, left = (height - scaled[0]) // 2, (width - scaled[1]) // 2
    return TF.pad(image, [left, top, width - scaled[1] - left, height - scaled[0] - top], fill=0)


def image_size_of(path: Path) -> tuple[int, int]:
    """(height, width) of an image file, read from its header (after EXIF orientation)."""
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        width, height = ImageOps.exif_transpose(image).size
    return height, width
