"""Heat maps of anomaly maps: each image beside its map in matplotlib's `inferno` colours, on a fixed scale so
that the maps of different images compare. Used by `predict` (`callbacks.HeatMapWriter`) and `cli.py score
--maps`; no Lightning, no pyplot."""

import functools
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from ae_lightning.files import atomic_write

#: the colormap of the maps: perceptually uniform, dark (normal) to bright (anomalous), legible in grey
COLORMAP = "inferno"
#: white pixels between the image and its map
HEAT_MAP_GAP = 4
#: digits of the index in a heat map's file name (more when the index needs them), so names sort in order
INDEX_DIGITS = 6


@functools.cache
def colormap_table() -> Tensor:
    """The colormap's colours as matplotlib converts them to bytes, (N, 3) uint8 (N = 256 for inferno)."""
    import matplotlib
    import numpy as np

    colormap = matplotlib.colormaps[COLORMAP]
    return torch.from_numpy(colormap(np.arange(colormap.N), bytes=True)[:, :3].copy())


def colour_map(anomaly_map: Tensor, low: float, high: float) -> Tensor:
    """A map (H, W) in colours, (3, H, W) uint8: `low` is the colormap's first colour, `high` and above its
    last, clipped, picked as matplotlib picks a float's colour (entry floor(t * N) of the table)."""
    table = colormap_table()
    span = max(high - low, 1e-12)  # a constant map (high == low) is all low
    fraction = ((anomaly_map.detach().double().cpu() - low) / span).nan_to_num(nan=0.0).clamp(0, 1)
    entries = (fraction * len(table)).floor().clamp(max=len(table) - 1).long()
    return table[entries].permute(2, 0, 1)


def heat_map_image(image: Tensor, anomaly_map: Tensor, low: float, high: float) -> Tensor:
    """The image (C, H, W), C = 1 or 3, floats in [0, 1], on the left and its anomaly map (H, W) on the right,
    coloured on the fixed scale [low, high] (clipped), a white gap between: (3, H, 2 W + HEAT_MAP_GAP)
    uint8."""
    if image.ndim != 3 or image.shape[0] not in (1, 3) or image.shape[1:] != anomaly_map.shape:
        raise ValueError(
            f"need an image (1 or 3, H, W) and a map (H, W) of its size, got {list(image.shape)} and "
            f"{list(anomaly_map.shape)}"
        )
    pixels = (image.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    pixels = pixels.expand(3, -1, -1)
    gap = torch.full((3, image.shape[1], HEAT_MAP_GAP), 255, dtype=torch.uint8)
    return torch.cat([pixels, gap, colour_map(anomaly_map, low, high)], dim=2)


def heat_map_name(index: int, path: str | None = None) -> str:
    """The file stem of the heat map of item `index`: `<index>` zero-padded, with `_<stem of path>` for an
    item read from a file."""
    number = f"{index:0{INDEX_DIGITS}d}"
    return number if path is None else f"{number}_{Path(path).stem}"


def safe_file_stem(name: str) -> str:
    """`name` as a file stem that every filesystem takes: characters other than letters, digits, `.`, `-`
    and `_` become `_`, no leading dot, at most 200 characters."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")[:200]
    return stem or "_"


def write_heat_maps(
    folder: str | Path,
    names: Sequence[str],
    images: Tensor,
    maps: Tensor,
    low: float | None,
    high: float | None,
) -> list[Path]:
    """Writes `<name>.png`, the `heat_map_image` of each image (B, C, H, W) in [0, 1] and its map (B, H, W),
    into `folder` (made if missing), each file atomically; names are made filesystem-safe. `low` and `high`
    None: each map is scaled to its own range (the maps do not compare then). Returns the files."""
    from PIL import Image

    if not len(names) == len(images) == len(maps):
        raise ValueError(f"{len(names)} names, {len(images)} images and {len(maps)} maps: need one each")
    folder = Path(folder)
    written = []
    for name, image, anomaly_map in zip(names, images, maps, strict=True):
        scale = (low, high) if low is not None and high is not None else own_range(anomaly_map)
        picture = heat_map_image(image, anomaly_map, *scale)
        path = folder / f"{safe_file_stem(name)}.png"
        with atomic_write(path) as file:
            Image.fromarray(picture.permute(1, 2, 0).numpy()).save(file, format="PNG")
        written.append(path)
    return written


def own_range(anomaly_map: Tensor) -> tuple[float, float]:
    """(min, max) of a map's finite pixels: the scale of a map that has no calibration to compare with."""
    finite = anomaly_map[anomaly_map.isfinite()]
    if finite.numel() == 0:
        return 0.0, 1.0
    return finite.min().item(), finite.max().item()
