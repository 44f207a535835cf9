"""Connected regions of ground-truth defect masks, found in pure torch on the masks' own device."""

import torch
import torch.nn.functional as F
from torch import Tensor

from ae_lightning.errors import ConfigError

#: pixels touching at an edge or a corner are one region: MVTec AD's evaluation code (`pro_curve_util.py`)
#: labels with `scipy.ndimage.label` and a 3x3 structure of ones, anomalib with `cv2.connectedComponents`
#: (8 by default) on the CPU and kornia's 3x3 max-pooling on a GPU
DEFAULT_CONNECTIVITY = 8


def check_connectivity(connectivity: int) -> int:
    """Raises ConfigError unless connectivity is 4 (edges) or 8 (edges and corners)."""
    if connectivity not in (4, 8):
        raise ConfigError(
            f"connectivity must be 4 (pixels sharing an edge) or 8 (an edge or a corner, as MVTec AD), "
            f"got {connectivity}"
        )
    return connectivity


def _neighbourhood_max(labels: Tensor, connectivity: int) -> Tensor:
    """(B, H, W) -> (B, H, W) the largest value over each pixel and its 4 or 8 neighbours. Shifted slices
    rather than `max_pool2d`, which takes floats only: float32 holds labels exactly only up to 2**24."""
    height, width = labels.shape[-2:]
    padded = F.pad(labels, (1, 1, 1, 1))
    largest = labels
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if (dy, dx) == (0, 0) or (connectivity == 4 and dy != 0 and dx != 0):
                continue
            largest = torch.maximum(largest, padded[:, 1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width])
    return largest


def connected_regions(gt_mask: Tensor, connectivity: int = DEFAULT_CONNECTIVITY) -> Tensor:
    """(B, H, W) bool or 0/1 masks -> (B, H, W) int64 labels: 0 on the background, one number per connected
    region of each mask, unique across the batch. A region's number is 1 + the flat index (over the whole
    batch) of its last pixel in raster order, so numbers are not consecutive; `torch.unique(labels,
    return_inverse=True)` makes them so.

    Every pixel starts with its own number; a round spreads the largest number one pixel further inside the
    mask and then lets each pixel take the number held by the pixel its number names (same region, number at
    least as large), so long thin regions settle in a few rounds rather than one per pixel of length. The
    loop is bounded (H * W + 1 rounds: no region's path is longer) and ends at the first round that changes
    nothing; that check is its only wait for the device, once per round.
    """
    if gt_mask.ndim != 3:
        raise ValueError(f"gt_mask must be (B, H, W), got shape {tuple(gt_mask.shape)}")
    check_connectivity(connectivity)
    inside = gt_mask.bool()
    count = inside.numel()
    numbers = torch.arange(1, count + 1, device=gt_mask.device).view_as(inside)
    labels = torch.where(inside, numbers, 0)
    background = torch.zeros(1, dtype=torch.long, device=gt_mask.device)
    height, width = inside.shape[-2:]
    for _ in range(height * width + 1):
        spread = torch.where(inside, _neighbourhood_max(labels, connectivity), 0)
        # entry n of the table is the label of the pixel numbered n (0: the background keeps 0)
        jumped = torch.cat([background, spread.flatten()])[spread]
        if torch.equal(jumped, labels):
            break
        labels = jumped
    return labels
