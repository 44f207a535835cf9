"""Pixel-level localisation metrics: connected regions, pixel AUROC, AUPRO and pixel F1, against direct
computations on tiny maps."""

from bisect import bisect
from collections import deque

import pytest
import torch
from torch import Tensor
from torchmetrics import Metric

from ae_lightning.errors import ConfigError
from ae_lightning.evaluation.localisation import AUPRO, PixelAUROC, PixelF1
from ae_lightning.evaluation.regions import connected_regions


def drawn(*pictures: str) -> Tensor:
    """(B, H, W) bool masks from pictures of equal size, '#' on the defect."""
    rows = [[line.strip() for line in picture.strip().splitlines()] for picture in pictures]
    return torch.tensor([[[char == "#" for char in line] for line in picture] for picture in rows])


TWO_BLOBS = """
##......
##....##
......##
........
"""
#: two 2x2 squares meeting at a corner
DIAGONAL = """
##......
##......
..##....
..##....
"""
#: a serpentine: one region whose path (45 pixels) is far longer than the image is wide
SERPENTINE = "\n".join(
    "#########" if row % 2 == 0 else ("........#" if row % 4 == 1 else "#........") for row in range(9)
)


def bfs_regions(mask: Tensor, connectivity: int) -> Tensor:
    """Breadth-first labelling of each image, numbered as connected_regions numbers regions: 1 + the flat
    index over the batch of the region's last pixel."""
    count, height, width = mask.shape
    steps = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    steps = [(dy, dx) for dy, dx in steps if connectivity == 8 or dy == 0 or dx == 0]
    labels = torch.zeros(mask.shape, dtype=torch.long)
    seen: set[tuple[int, int, int]] = set()
    for b in range(count):
        for y in range(height):
            for x in range(width):
                if not mask[b, y, x] or (b, y, x) in seen:
                    continue
                region, queue = [], deque([(y, x)])
                seen.add((b, y, x))
                while queue:
                    cy, cx = queue.popleft()
                    region.append((cy, cx))
                    for dy, dx in steps:
                        ny, nx = cy + dy, cx + dx
                        if (
                            0 <= ny < height
                            and 0 <= nx < width
                            and mask[b, ny, nx]
                            and (b, ny, nx) not in seen
                        ):
                            seen.add((b, ny, nx))
                            queue.append((ny, nx))
                number = 1 + max(b * height * width + ry * width + rx for ry, rx in region)
                for ry, rx in region:
                    labels[b, ry, rx] = number
    return labels


@pytest.mark.parametrize("connectivity", [8, 4])
def test_connected_regions_match_a_breadth_first_search(connectivity: int) -> None:
    """Drawn masks, an empty one and random ones: the labels equal BFS's; the diagonal pair is one region with
    8-connectivity (MVTec AD's) and two with 4."""
    masks = torch.cat([drawn(TWO_BLOBS, DIAGONAL), torch.zeros(1, 4, 8, dtype=torch.bool)])
    labels = connected_regions(masks, connectivity)
    torch.testing.assert_close(labels, bfs_regions(masks, connectivity))
    assert labels.dtype == torch.long
    assert [labels[i].unique().numel() - 1 for i in range(3)] == [2, 1 if connectivity == 8 else 2, 0]
    serpentine = drawn(SERPENTINE)
    torch.testing.assert_close(
        connected_regions(serpentine, connectivity), bfs_regions(serpentine, connectivity)
    )
    assert connected_regions(serpentine, connectivity).unique().tolist() == [0, 81]  # last pixel: (8, 8)
    random = torch.rand(3, 12, 12, generator=torch.Generator().manual_seed(0)) < 0.45
    torch.testing.assert_close(connected_regions(random, connectivity), bfs_regions(random, connectivity))


def mann_whitney(scores: list[float], defects: list[bool]) -> float:
    """The AUROC by hand: the fraction of (defect, normal) pairs ordered right, ties counting half."""
    positives = [s for s, d in zip(scores, defects, strict=True) if d]
    negatives = [s for s, d in zip(scores, defects, strict=True) if not d]
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def test_pixel_auroc_exact_is_the_mann_whitney_count() -> None:
    """20 pixels over two updates, with ties, and a defect at 60 above a normal pixel at 40 (a sigmoid would
    tie them at 1)."""
    generator = torch.Generator().manual_seed(1)
    scores = torch.randint(0, 6, (2, 2, 5), generator=generator).float() / 5
    defects = torch.rand(2, 2, 5, generator=generator) < 0.4
    scores[0, 0, 0], defects[0, 0, 0] = 40.0, False
    scores[1, 1, 4], defects[1, 1, 4] = 60.0, True
    metric = PixelAUROC()
    metric.update(scores[:1], defects[:1])
    metric.update(scores[1:], defects[1:])
    expected = mann_whitney(scores.flatten().tolist(), defects.flatten().tolist())
    torch.testing.assert_close(metric.compute().item(), expected)


def signal_maps(count: int, seed: int) -> tuple[Tensor, Tensor]:
    """(count, 32, 32) maps in [0, 1.5) that score defects 0.5 higher on average, and their random masks."""
    generator = torch.Generator().manual_seed(seed)
    defects = torch.rand(count, 32, 32, generator=generator) < 0.2
    return torch.rand(count, 32, 32, generator=generator) + 0.5 * defects, defects


def state_size(metric: Metric) -> int:
    """How many numbers the metric's states hold."""
    sizes = [
        sum(t.numel() for t in s) if isinstance(s, list) else s.numel() for s in metric.metric_state.values()
    ]
    return sum(sizes)


def test_pixel_auroc_binned_approaches_the_exact_value_in_fixed_memory() -> None:
    """1000 bins of [0, 1.5] (range set after construction): within 1e-3 of exact; 5 updates hold no more
    numbers than 1, where the exact metric's grow."""
    maps, defects = signal_maps(4, 2)
    exact, binned = PixelAUROC(), PixelAUROC(num_bins=1000)
    binned.score_range = (0.0, 1.5)
    exact.update(maps, defects)
    binned.update(maps, defects)
    assert abs(binned.compute().item() - exact.compute().item()) < 1e-3
    assert 0.8 < exact.compute().item() < 0.95  # the signal is there, so the comparison means something
    sizes = [state_size(binned), state_size(exact)]
    for _ in range(4):
        exact.update(maps, defects)
        binned.update(maps, defects)
    assert state_size(binned) == sizes[0] == 2000
    assert state_size(exact) == 5 * sizes[1]


def reference_aupro(maps: Tensor, masks: Tensor, max_fpr: float) -> float:
    """The definition, directly: for each distinct score t, PRO = the mean over BFS regions of the fraction
    of their pixels >= t and FPR = the fraction of normal pixels >= t; points after (0, 0), integrated as
    MVTec AD's `trapezoid(x, y, x_max)` (bisect, linear at x_max), divided by max_fpr."""
    labels = bfs_regions(masks, 8)
    regions = [maps[labels == number] for number in labels.unique().tolist() if number]
    normal = maps[~masks]
    fprs, pros = [0.0], [0.0]
    for threshold in maps.unique().flip(0).tolist():
        fprs.append((normal >= threshold).double().mean().item())
        pros.append(sum((r >= threshold).double().mean().item() for r in regions) / len(regions))
    ins = bisect(fprs, max_fpr)
    area = sum(0.5 * (pros[k] + pros[k + 1]) * (fprs[k + 1] - fprs[k]) for k in range(ins - 1))
    if fprs[ins - 1] < max_fpr:
        at_limit = pros[ins - 1] + (pros[ins] - pros[ins - 1]) * (max_fpr - fprs[ins - 1]) / (
            fprs[ins] - fprs[ins - 1]
        )
        area += 0.5 * (pros[ins - 1] + at_limit) * (max_fpr - fprs[ins - 1])
    return area / max_fpr


def aupro_both(maps: Tensor, masks: Tensor, num_bins: int = 1000) -> tuple[float, float]:
    """AUPRO exact and binned over [0, 1], each over two updates."""
    exact, binned = AUPRO(), AUPRO(num_bins=num_bins, score_range=(0.0, 1.0))
    half = len(maps) // 2
    for metric in (exact, binned):
        metric.update(maps[:half], masks[:half])
        metric.update(maps[half:], masks[half:])
    return exact.compute().item(), binned.compute().item()


def test_aupro_exact_matches_the_definition_computed_directly() -> None:
    """Irregular random regions (diagonal contacts included) of several sizes and tied scores (two decimals):
    the metric equals the loop over thresholds; max_fpr 0.3 and 0.05 cross the curve between points."""
    generator = torch.Generator().manual_seed(3)
    masks = torch.rand(3, 10, 10, generator=generator) < 0.25
    masks[2] = False  # a defect-free image: all its pixels are normal
    maps = (torch.rand(3, 10, 10, generator=generator) + 0.3 * masks).div(1.3).mul(100).round().div(100)
    for max_fpr in (0.3, 0.05):
        metric = AUPRO(max_fpr=max_fpr)
        metric.update(maps, masks)
        torch.testing.assert_close(
            metric.compute().item(), reference_aupro(maps, masks, max_fpr), rtol=0, atol=1e-6
        )


def two_squares(count: int, size: int = 12) -> Tensor:
    """(count, size, size) masks each with two 3x3 squares apart (the last image defect-free)."""
    masks = torch.zeros(count, size, size, dtype=torch.bool)
    masks[:-1, 1:4, 1:4] = True
    masks[:-1, 6:9, 6:9] = True
    return masks


def test_aupro_of_maps_whose_value_the_definition_fixes() -> None:
    """Exact and binned (1000 bins of [0, 1]): a perfect map 1.0; a map marking one of two equal regions,
    normal pixels between the two, 0.5 (the curve is (0, 0.5) to (1, 0.5) before the second region); the
    same with the second region tied with the normal pixels at 0, 0.575 (the last segment runs from (0, 0.5)
    to (1, 1): PRO 0.65 at FPR 0.3, area 0.3 (0.5 + 0.65) / 2 = 0.1725, / 0.3); a constant map 0.15 (one
    point (1, 1): the diagonal, area 0.3^2 / 2 = 0.045, / 0.3)."""
    masks = two_squares(3)
    perfect = masks.float()
    normal = torch.rand(masks.shape, generator=torch.Generator().manual_seed(4)) * 0.8 + 0.1
    one_of_two = torch.where(masks, 0.0, normal)
    one_of_two[:-1, 1:4, 1:4] = 1.0
    one_of_two_tied = torch.zeros(masks.shape)
    one_of_two_tied[:-1, 1:4, 1:4] = 1.0
    constant = torch.full(masks.shape, 0.7)
    for maps, expected in ((perfect, 1.0), (one_of_two, 0.5), (one_of_two_tied, 0.575), (constant, 0.15)):
        exact, binned = aupro_both(maps, masks)
        torch.testing.assert_close([exact, binned], [expected, expected], rtol=0, atol=1e-6)


def random_aupro_data() -> tuple[Tensor, Tensor]:
    """32 maps 32x32 uniform in [0, 1); 16 with two 8x8 regions: 2048 region pixels, 30720 normal ones."""
    masks = torch.zeros(32, 32, 32, dtype=torch.bool)
    masks[:16, 4:12, 4:12] = True
    masks[:16, 18:26, 18:26] = True
    return torch.rand(masks.shape, generator=torch.Generator().manual_seed(5)), masks


def test_aupro_of_a_random_map_is_about_half_the_limit_and_binned_agrees() -> None:
    """A random map's PRO tracks its FPR, so AUPRO ~ (0.3^2 / 2) / 0.3 = 0.15. With M region and N normal
    pixels the curve's noise is a Brownian bridge of variance x (1 - x) (1/M + 1/N), whose normalised area
    up to a = 0.3 has variance (a^3/3 - a^4/4) / a^2 (1/M + 1/N) = 0.0775 (1/2048 + 1/30720): std 0.0064,
    so 0.025 is about 4 std. 1000 bins: within 1e-2 of exact."""
    maps, masks = random_aupro_data()
    exact, binned = aupro_both(maps, masks)
    assert abs(exact - 0.15) < 0.025
    assert abs(binned - exact) < 1e-2


@pytest.mark.parametrize("num_bins", [None, 100])
def test_aupro_merged_from_two_devices_equals_one_pass(num_bins: int | None) -> None:
    """Halves seen by two metrics, states merged as torchmetrics reduces them across devices (cat lists, sum
    tensors): the value one metric gives over everything."""
    maps, masks = random_aupro_data()
    maps, masks = maps[8:24], masks[8:24]  # 8 images with defects, 8 without
    one_pass, first, second = (AUPRO(num_bins=num_bins, score_range=(0.0, 1.0)) for _ in range(3))
    one_pass.update(maps, masks)
    first.update(maps[::2], masks[::2])
    second.update(maps[1::2], masks[1::2])
    first.merge_state(second)
    assert first.num_regions.item() == one_pass.num_regions.item() == 16
    torch.testing.assert_close(first.compute(), one_pass.compute(), rtol=0, atol=1e-6)


def test_pixel_f1_is_the_hand_count() -> None:
    """Threshold 0.5 on 12 pixels: flagged (> 0.5) 0.9, 0.6, 0.7, 0.8 of which defects 0.9, 0.6: TP 2, FP 2;
    the defects 0.5 and 0.1 missed: FN 2; F1 = 2 * 2 / (2 * 2 + 2 + 2) = 0.5."""
    maps = torch.tensor([[[0.9, 0.6, 0.5, 0.1], [0.7, 0.2, 0.3, 0.4], [0.8, 0.0, 0.2, 0.3]]])
    masks = torch.tensor([[[1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]]])
    metric = PixelF1()
    metric.threshold = 0.5
    metric.update(maps, masks)
    torch.testing.assert_close(metric.compute().item(), 0.5)


def test_updates_wait_for_the_device_only_in_the_region_labelling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Counted on the CPU: the updates of every metric read nothing on the host, but for the labelling's
    once-a-round check that it has settled."""
    from tests.syncs import count_host_syncs

    maps, masks = signal_maps(2, 6)
    metrics = [PixelAUROC(), PixelAUROC(8, (0.0, 1.5)), AUPRO(), AUPRO(num_bins=8, score_range=(0.0, 1.5))]
    with count_host_syncs(monkeypatch) as syncs:
        syncs.active = True
        for metric in [*metrics, PixelF1(0.5)]:
            metric.update(maps, masks)
        syncs.active = False
    assert syncs.found
    assert all(found.startswith("aten::equal @ regions.py") for found in syncs.found), syncs.found


def test_bad_arguments_say_what_to_do() -> None:
    """One-line ConfigErrors for an unset range or threshold and for impossible settings."""
    maps, masks = signal_maps(1, 7)
    with pytest.raises(ConfigError, match="score_range = \\(low, high\\) with low < high, set before update"):
        PixelAUROC(num_bins=10).update(maps, masks)
    with pytest.raises(ConfigError, match="score_range"):
        AUPRO(num_bins=10, score_range=(1.0, 1.0)).update(maps, masks)
    with pytest.raises(ConfigError, match="threshold set before update"):
        PixelF1().update(maps, masks)
    with pytest.raises(ConfigError, match="max_fpr must lie in \\(0, 1\\]"):
        AUPRO(max_fpr=0.0)
    with pytest.raises(ConfigError, match="num_bins must be a positive number"):
        PixelAUROC(num_bins=0)
    with pytest.raises(ConfigError, match=r"connectivity must be 4 .* or 8"):
        connected_regions(masks, connectivity=6)
