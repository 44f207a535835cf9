"""Ground-truth masks of the one-class folder layout (`root/ground_truth/`, paired by `layouts.pair_masks`):
decoded once and cached like the images, fitted to the same size by nearest interpolation, one channel."""

from dataclasses import replace
from pathlib import Path

import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor

from ae_lightning.data.image_cache import SIZE_MISMATCH, DecodeSettings, decode_images
from ae_lightning.data.layouts import Listing
from ae_lightning.errors import DataError


def decode_masks(
    listing: Listing,
    image_rows: dict[str, Tensor],
    settings: DecodeSettings,
    cache_dir: Path,
    workers: int,
    skip_corrupt: bool,
    description: str = "masks",
) -> tuple[Tensor, dict[str, Tensor]]:
    """The masks of the images that decoded (`image_rows[split]` (N,) >= 0), as (M, 1, H, W) uint8 (a pixel
    is a defect where its value is over 127), and per split the row of each file's mask (N,) int64: -1 for
    a normal image (all False), and for a defect image whose mask does not decode, which `skip_corrupt`
    leaves out (the caller drops it) and which is otherwise an error, as is a mask not of its image's size.
    """
    pairs: dict[Path, Path] = {}  # mask -> its image (the first, where test and val share a mask)
    for split, masks in listing.masks.items():
        for mask, image, row in zip(masks, listing.files[split], image_rows[split].tolist(), strict=True):
            if mask is not None and row >= 0:
                pairs.setdefault(mask, image)
    height, width = settings.size
    if not pairs:
        return torch.zeros((0, 1, height, width), dtype=torch.uint8), {
            split: torch.full((len(files),), -1, dtype=torch.int64) for split, files in listing.files.items()
        }
    files = list(pairs)
    mask_settings = replace(settings, channels=1, interpolation="nearest")
    decoded = decode_images(files, mask_settings, cache_dir, workers, description, like=list(pairs.values()))
    mismatched = [(path, reason) for path, reason in decoded.failures if reason.startswith(SIZE_MISMATCH)]
    if mismatched:
        path, reason = mismatched[0]
        raise DataError(
            f"the mask {path} is {reason}, which is {pairs[Path(path)]}: save the mask at its image's size"
        )
    if decoded.failures:
        (path, reason), count = decoded.failures[0], len(decoded.failures)
        if not skip_corrupt:
            more = f", nor can {count - 1} more masks" if count > 1 else ""
            raise DataError(
                f"the mask {path} cannot be decoded as an image ({reason}){more}: replace it, or set "
                "--data.skip_corrupt true to leave such masks and their images out"
            )
        rank_zero_warn(
            f"left out {count} defect images whose mask does not decode, the first {path}: {reason}"
        )
    row_of = dict(zip(files, decoded.rows.tolist(), strict=True))
    mask_rows = {
        split: torch.tensor(
            [-1 if mask is None else row_of.get(mask, -1) for mask in masks], dtype=torch.int64
        )
        for split, masks in listing.masks.items()
    }
    return decoded.images, mask_rows
