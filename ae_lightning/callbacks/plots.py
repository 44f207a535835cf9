"""The test pictures drawn with matplotlib: ROC and precision-recall curves, histograms of anomaly scores, the
most and least anomalous images beside their reconstructions and heat maps, and a scatter of 2-d codes.

Pure functions: tensors in, an RGB (3, H, W) float image in [0, 1] out, of a fixed size in pixels. Each
picture is its own `matplotlib.figure.Figure` on its own Agg canvas, never pyplot's global state, so nothing
is shared between tests, threads or runs.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from torch import Tensor
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_average_precision,
    binary_precision_recall_curve,
    binary_roc,
)

from ae_lightning.evaluation.one_class import squash

DPI = 100
NORMAL_COLOUR, ANOMALY_COLOUR = "tab:blue", "tab:red"
#: (height, width) in pixels of the fixed-size pictures
ROC_PR_SIZE, HISTOGRAM_SIZE, SCATTER_SIZE = (480, 1000), (420, 760), (600, 700)
#: the anomalies picture, in pixels: an image's panel (with the white around it), the row captions' column,
#: the column titles, the colorbar's column, and the gap between the most and the least anomalous
PANEL, PANEL_PAD, CAPTION_WIDTH, HEADER, COLORBAR_WIDTH, BLOCK_GAP = 150, 4, 160, 44, 110, 20
HEAT_MAP = "jet"


def new_figure(height: int, width: int, layout: str | None = "constrained") -> Figure:
    """A white figure of `height` x `width` pixels on its own Agg canvas, by default laid out without
    overlaps."""
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout=layout)
    FigureCanvasAgg(figure)
    return figure


def render(figure: Figure) -> Tensor:
    """The figure drawn as a (3, H, W) float image in [0, 1]."""
    canvas = figure.canvas
    assert isinstance(canvas, FigureCanvasAgg)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return torch.from_numpy(rgba[..., :3].copy()).permute(2, 0, 1).float().div(255)


@dataclass(frozen=True)
class DetectionCurves:
    """ROC and precision-recall curves of anomaly scores (anomaly = the positive class), with their areas as
    `OneClassMetrics` measures them."""

    fpr: Tensor
    tpr: Tensor
    precision: Tensor
    recall: Tensor
    auroc: float
    #: the average precision
    aupr: float
    #: the fraction of anomalies: the precision of flagging at random
    base_rate: float


def detection_curves(scores: Tensor, gt_anomaly: Tensor) -> DetectionCurves:
    """The curves of scores (N,) against the targets (N,) bool; both classes must occur."""
    squashed, targets = squash(scores), gt_anomaly.long()  # squashed: large scores would tie in a sigmoid
    fpr, tpr, _ = binary_roc(squashed, targets)
    precision, recall, _ = binary_precision_recall_curve(squashed, targets)
    return DetectionCurves(
        fpr, tpr, precision, recall,
        auroc=binary_auroc(squashed, targets).item(),
        aupr=binary_average_precision(squashed, targets).item(),
        base_rate=gt_anomaly.float().mean().item(),
    )  # fmt: skip


def operating_point(scores: Tensor, gt_anomaly: Tensor, threshold: float) -> tuple[float, float, float]:
    """(FPR, TPR = recall, precision) of flagging `score > threshold`, the rule of `test/f1`; the precision
    is 1 when nothing is flagged."""
    flagged, anomalous = scores > threshold, gt_anomaly.bool()
    true_flags = (flagged & anomalous).sum().item()
    fpr = flagged[~anomalous].float().mean().item()
    return fpr, flagged[anomalous].float().mean().item(), true_flags / max(flagged.sum().item(), 1)


def roc_pr_figure(scores: Tensor, gt_anomaly: Tensor, threshold: float | None) -> Figure:
    """Two panels: the ROC curve (AUROC in its legend, the chance diagonal) and the precision-recall curve
    (AUPR in its legend, the base rate dashed), the threshold's operating point marked on both."""
    curves = detection_curves(scores, gt_anomaly)
    figure = new_figure(*ROC_PR_SIZE)
    roc, pr = figure.subplots(1, 2)
    roc.plot(curves.fpr, curves.tpr, color=ANOMALY_COLOUR, lw=2, label=f"AUROC {curves.auroc:.3f}")
    roc.plot([0, 1], [0, 1], color="gray", ls=":", label="chance (AUROC 0.5)")
    roc.set(
        xlabel="false-positive rate (normal images flagged)", ylabel="true-positive rate (anomalies found)"
    )
    pr.plot(curves.recall, curves.precision, color=ANOMALY_COLOUR, lw=2, label=f"AUPR {curves.aupr:.3f}")
    pr.axhline(curves.base_rate, color="gray", ls="--", label=f"chance: anomaly rate {curves.base_rate:.2f}")
    pr.set(xlabel="recall (anomalies found)", ylabel="precision (flagged images that are anomalies)")
    if threshold is not None:
        fpr, tpr, precision = operating_point(scores, gt_anomaly, threshold)
        style = {"marker": "o", "ms": 9, "color": "black", "ls": "none"}
        roc.plot(fpr, tpr, **style, label=f"threshold {threshold:.4g}: FPR {fpr:.2f}, TPR {tpr:.2f}")
        pr.plot(tpr, precision, **style, label=f"threshold {threshold:.4g}: precision {precision:.2f}")
    for axes, title in ((roc, "ROC curve"), (pr, "precision-recall curve")):
        axes.set(title=title, xlim=(-0.01, 1.01), ylim=(-0.01, 1.03))
        axes.grid(alpha=0.3)
        axes.legend(loc="lower right" if axes is roc else "lower left")
    count = int(gt_anomaly.sum().item())
    figure.suptitle(f"{count} anomalous and {len(scores) - count} normal test images (anomaly = positive)")
    return figure


def roc_pr_picture(scores: Tensor, gt_anomaly: Tensor, threshold: float | None) -> Tensor:
    """`roc_pr_figure` drawn: (3, *ROC_PR_SIZE) in [0, 1]."""
    return render(roc_pr_figure(scores, gt_anomaly, threshold))


def histogram_picture(normal: Tensor, anomalous: Tensor, threshold: float | None, bins: int = 40) -> Tensor:
    """Histograms (counts) of the scores of normal (N,) and anomalous (M,) images over the 0.5th to 99.5th
    percentile of all scores, the scores beyond it counted in the end bins; the threshold as a dashed line (at
    the edge, saying so, when it lies beyond). (3, *HISTOGRAM_SIZE) in [0, 1]."""
    every = torch.cat([normal, anomalous]).double()
    low, high = torch.quantile(every, 0.005).item(), torch.quantile(every, 0.995).item()
    if high - low < 1e-12:
        low, high = low - 0.5, high + 0.5
    edges = np.linspace(low, high, bins + 1)
    figure = new_figure(*HISTOGRAM_SIZE)
    axes = figure.subplots()
    groups = ((normal, NORMAL_COLOUR, "normal"), (anomalous, ANOMALY_COLOUR, "anomalous"))
    for scores, colour, name in groups:
        clipped = scores.double().clamp(low, high).numpy()
        axes.hist(clipped, bins=edges, color=colour, alpha=0.45, label=f"{name} ({len(scores)} images)")
    for scores, colour, _ in groups:  # the outlines above both fills, so neither hides the other's
        axes.hist(scores.double().clamp(low, high).numpy(), bins=edges, color=colour, histtype="step", lw=1.5)
    if threshold is not None:
        # a threshold beyond the range would squash the histograms: it is drawn at the edge instead
        beyond = " (below the range)" if threshold < low else " (above the range)" if threshold > high else ""
        where = min(max(threshold, low), high)
        axes.axvline(where, color="black", ls="--", lw=2, label=f"threshold {threshold:.4g}{beyond}")
    axes.set(
        xlabel="anomaly score (0.5th to 99.5th percentile; scores beyond counted in the end bins)",
        ylabel="images",
        title="anomaly scores of the test images",
        xlim=(low, high),
    )
    axes.legend()
    return render(figure)


def scatter_picture(points: Tensor, labels: Tensor) -> Tensor:
    """2-d codes (N, 2) as dots coloured by class (N,) (tab10), with a legend: (3, *SCATTER_SIZE)."""
    figure = new_figure(*SCATTER_SIZE)
    axes = figure.subplots()
    palette = colormaps["tab10"].colors
    for label in sorted({int(label) for label in labels.tolist()}):
        chosen = points[labels.long() == label].float().numpy()
        axes.scatter(chosen[:, 0], chosen[:, 1], s=10, alpha=0.8, color=palette[label % 10], label=str(label))
    axes.set(xlabel="z1", ylabel="z2", title=f"latent codes of {len(points)} test images")
    axes.grid(alpha=0.3)
    figure.legend(loc="outside right center", title="class", markerscale=2)
    return render(figure)


def anomalies_size(rows: int, columns: int, num_most: int, with_colorbar: bool) -> tuple[int, int]:
    """(height, width) in pixels of an anomalies picture of `rows` images, the first `num_most` of them the
    most anomalous, with `columns` panels per image."""
    gap = BLOCK_GAP if 0 < num_most < rows else 0
    width = CAPTION_WIDTH + columns * PANEL + (COLORBAR_WIDTH if with_colorbar else 0)
    return HEADER + rows * PANEL + gap, width


def show_image(axes: Axes, image: Tensor) -> None:
    """An image (C, H, W) in [0, 1]: RGB as it is, any other number of channels by its first, in gray."""
    if image.shape[0] == 3:
        axes.imshow(image.permute(1, 2, 0).float().numpy(), interpolation="nearest")
    else:
        axes.imshow(image[0].float().numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")


def anomalies_picture(
    images: Tensor,
    scores: Tensor,
    gt_anomaly: Tensor,
    num_most: int,
    labels: Tensor | None = None,
    reconstructions: Tensor | None = None,
    maps: Tensor | None = None,
    map_range: tuple[float, float] | None = None,
    gt_masks: Tensor | None = None,
    class_names: Sequence[str] | None = None,
) -> Tensor:
    """One row per image (N, C, H, W) in [0, 1], the first `num_most` the most anomalous, then (after a gap)
    the least: the input | its reconstruction (N, C, H, W) in [0, 1] | its anomaly map (N, H, W) over it, on
    one colour scale (`map_range`, default the maps' min and max) with a colorbar | its ground-truth mask
    (N, H, W); each column only when given. Each row is captioned with its rank, score, truth (red:
    anomalous, blue: normal) and class (`labels`, named by `class_names` where given).
    (3, *anomalies_size(N, columns, num_most, maps is not None)) in [0, 1]."""
    columns = [("input", images)]
    columns += [("reconstruction", reconstructions)] if reconstructions is not None else []
    columns += [("anomaly map\nover the input", images)] if maps is not None else []
    columns += [("ground-truth\nmask", gt_masks)] if gt_masks is not None else []
    height, width = anomalies_size(len(images), len(columns), num_most, maps is not None)
    # laid out by hand, in pixels: every picture of the same rows and columns is the same
    figure = new_figure(height, width, layout=None)
    if maps is not None:
        low, high = map_range if map_range is not None else (maps.min().item(), maps.max().item())
        norm = Normalize(low, max(high, low + 1e-12))
    inner = PANEL - 2 * PANEL_PAD
    for row in range(len(images)):
        top = HEADER + row * PANEL + (BLOCK_GAP if 0 < num_most <= row else 0)  # pixels from the top
        bottom = height - top - PANEL + PANEL_PAD
        for column, (title, panels) in enumerate(columns):
            left = CAPTION_WIDTH + column * PANEL + PANEL_PAD
            axes = figure.add_axes((left / width, bottom / height, inner / width, inner / height))
            if panels is gt_masks:
                axes.imshow(panels[row].float().numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            else:
                show_image(axes, panels[row])
            if title.startswith("anomaly map"):
                axes.imshow(maps[row].float().numpy(), cmap=HEAT_MAP, norm=norm, alpha=0.5)
            axes.set_xticks([])
            axes.set_yticks([])
            if row == 0:
                axes.set_title(title, fontsize=10)
        rank = f"most anomalous #{row + 1}" if row < num_most else f"least anomalous #{row - num_most + 1}"
        truly = bool(gt_anomaly[row])
        label = None if labels is None else int(labels[row])
        named = (
            class_names[label] if class_names and label is not None and label < len(class_names) else label
        )
        truth = ("anomalous" if truly else "normal") + ("" if label is None else f"\nclass {named}")
        figure.text(
            (CAPTION_WIDTH - 6) / width, (height - top - PANEL / 2) / height,
            f"{rank}\nscore {scores[row].item():.4g}\n{truth}",
            ha="right", va="center", fontsize=10, color=ANOMALY_COLOUR if truly else NORMAL_COLOUR,
        )  # fmt: skip
    if maps is not None:
        # one scale for the heat maps of all rows, beside the whole grid
        left, bar_height = width - COLORBAR_WIDTH + 14, (height - HEADER) * 0.6
        cax = figure.add_axes(
            (left / width, (height - HEADER - bar_height) / 2 / height, 16 / width, bar_height / height)
        )
        colorbar = figure.colorbar(ScalarMappable(norm, HEAT_MAP), cax=cax)
        colorbar.set_label("anomaly map" + ("" if map_range is None else " (scale set on validation)"))
    return render(figure)
