"""Pictures of a tested model, drawn with torch and PIL: latent interpolations, a 2-d latent scatter, and the
most and least anomalous test images with a histogram of the anomaly scores."""

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from PIL import Image, ImageDraw
from torch import Tensor
from torchvision.utils import make_grid, save_image

from ae_lightning.autoencoders import Autoencoder, Conditional, Generative, LatentModel
from ae_lightning.batch import Batch
from ae_lightning.callbacks.gather import Collected
from ae_lightning.callbacks.grid import stack_blocks
from ae_lightning.callbacks.images import autoencoder_of, log_image
from ae_lightning.errors import ConfigError
from ae_lightning.files import atomic_write
from ae_lightning.runs import run_folder
from ae_lightning.value_range import to_unit_interval

#: colours of classes 0..9 (matplotlib's tab10), and of normal / anomalous scores
PALETTE = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
]  # fmt: skip
NORMAL_COLOUR, ANOMALY_COLOUR = PALETTE[0], PALETTE[3]


def scatter_image(points: Tensor, labels: Tensor, size: int = 480, margin: int = 30) -> Tensor:
    """A (3, size, size) image in [0, 1]: 2-d points (N, 2) as dots coloured by label, with a legend."""
    canvas = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(canvas)
    low, high = points.min(0).values, points.max(0).values
    scaled = (points - low) / (high - low).clamp(min=1e-8) * (size - 2 * margin) + margin
    for (x, y), label in zip(scaled.tolist(), labels.tolist(), strict=True):
        y = size - y  # the y axis points up
        draw.ellipse((x - 1.5, y - 1.5, x + 1.5, y + 1.5), fill=PALETTE[int(label) % len(PALETTE)])
    for label in sorted(set(labels.tolist())):
        top = 6 + 14 * int(label)
        draw.rectangle((size - 40, top, size - 30, top + 10), fill=PALETTE[int(label) % len(PALETTE)])
        draw.text((size - 26, top - 1), str(int(label)), fill="black")
    return to_tensor(canvas)


def histogram_image(
    normal: Tensor,
    anomalous: Tensor,
    threshold: float | None,
    bins: int = 50,
    size: tuple[int, int] = (600, 300),
) -> Tensor:
    """A (3, H, W) image in [0, 1]: histograms of normal (blue) and anomalous (red) scores, each as a density
    (its bars sum to the same height), over the 0.5th to 99.5th percentile of all scores; the threshold, when
    there is one, as a black vertical line."""
    width, height = size
    margin = 20
    every = torch.cat([normal, anomalous]).double()
    low, high = torch.quantile(every, 0.005).item(), torch.quantile(every, 0.995).item()
    high = max(high, low + 1e-8)
    canvas = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(canvas)
    densities = [
        torch.histc(scores.double().clamp(low, high), bins=bins, min=low, max=high) / max(len(scores), 1)
        for scores in (normal, anomalous)
    ]
    peak = max(density.max().item() for density in densities) or 1.0
    bar = (width - 2 * margin) / bins
    for offset, (density, colour) in enumerate(zip(densities, (NORMAL_COLOUR, ANOMALY_COLOUR), strict=True)):
        for i, value in enumerate(density.tolist()):
            left = margin + i * bar + offset * bar / 2
            top = height - margin - value / peak * (height - 2 * margin)
            draw.rectangle((left, top, left + bar / 2 - 1, height - margin), fill=colour)
    draw.line((margin, height - margin, width - margin, height - margin), fill="black")
    if threshold is not None and low <= threshold <= high:
        x = margin + (threshold - low) / (high - low) * (width - 2 * margin)
        draw.line((x, margin, x, height - margin), fill="black", width=2)
    draw.text((margin, 4), f"normal (blue) vs anomalous (red) scores, {low:.3g} to {high:.3g}", fill="black")
    return to_tensor(canvas)


def to_tensor(image: Image.Image) -> Tensor:
    """PIL RGB image -> (3, H, W) float in [0, 1]."""
    data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return data.view(image.height, image.width, 3).permute(2, 0, 1).float() / 255


class TestPictures(Callback):
    """At the end of `test`, draws what applies to the model and the data, as PNGs in the run folder
    (`interpolation.png`, `latent_scatter.png`, `anomalies.png`, `anomaly_histogram.png`) and to the loggers
    that take images:

    - models with a prior (`Generative`, but not `Conditional`): a latent interpolation grid, one row
      per pair of test images (the 2i-th and (2i+1)-th), decoding `steps` codes evenly spaced between their
      posterior means, the two images at the ends;
    - 2-d latents: a scatter of the test latents coloured by label;
    - one-class runs (batches with `gt_anomaly`): the `num_extremes` most anomalous test images (top block)
      and the least anomalous (bottom block), and a histogram of the scores of normal vs anomalous images with
      the threshold.

    Test batches are gathered from every device and drawn by global rank zero.

    Args:
        num_pairs: rows of the interpolation grid.
        steps: codes decoded between the two images of a row (the row shows them plus the two images).
        num_extremes: images in each block of the anomaly picture.
    """

    __test__ = False  # a callback, not a pytest test class

    def __init__(self, num_pairs: int = 8, steps: int = 8, num_extremes: int = 16) -> None:
        if num_pairs < 1 or steps < 1 or num_extremes < 1:
            raise ConfigError(
                f"need num_pairs, steps and num_extremes >= 1, got {num_pairs}, {steps} and {num_extremes}"
            )
        self.num_pairs = num_pairs
        self.steps = steps
        self.num_extremes = num_extremes
        self._collected = Collected()
        self.written: list[Path] = []

    def on_test_epoch_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._collected = Collected()

    @torch.no_grad()
    def on_test_batch_end(
        self,
        trainer: "pl.Trainer",
        pl_module: "pl.LightningModule",
        outputs: Any,
        batch: Batch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        model = autoencoder_of(pl_module)
        parts = {"images": batch.inputs, "latents": model.latent(batch)}
        if batch.labels is not None:
            parts["labels"] = batch.labels
        if batch.gt_anomaly is not None:
            parts["gt_anomaly"] = batch.gt_anomaly
            parts["scores"] = model.anomaly_score(batch)
        self._collected.add(parts)

    def on_test_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        gathered = self._collected.gather(trainer)
        folder = Path(run_folder(trainer))  # collective: every rank calls it
        if not trainer.is_global_zero or not gathered:
            return
        pictures = self.draw(autoencoder_of(pl_module), gathered, pl_module.anomaly_threshold)
        folder.mkdir(parents=True, exist_ok=True)
        self.written = []
        for name, picture in pictures.items():
            path = folder / f"{name}.png"
            with atomic_write(path) as file:
                save_image(picture, file, format="png")
            log_image(trainer, f"test/{name}", picture)
            self.written.append(path)
        if self.written:
            rank_zero_info(f"Test pictures written: {', '.join(map(str, self.written))}")

    @torch.no_grad()
    def draw(
        self, model: LatentModel, data: dict[str, Tensor], threshold: float | None = None
    ) -> dict[str, Tensor]:
        """The pictures that apply, by name, each (3, H, W) in [0, 1]."""
        pictures: dict[str, Tensor] = {}
        images, latents = data["images"], data["latents"]
        drawable = images.ndim == 4 and len(images) >= 2  # images, not vectors
        if isinstance(model, Generative) and not isinstance(model, Conditional) and drawable:
            pictures["interpolation"] = self.interpolation(model, images, latents)
        if latents.shape[1] == 2 and "labels" in data:
            pictures["latent_scatter"] = scatter_image(latents, data["labels"])
        if "scores" in data:
            scores, gt_anomaly = data["scores"], data["gt_anomaly"].bool()
            order = scores.argsort(descending=True)
            count = min(self.num_extremes, len(scores))
            blocks = [images[order[:count]], images[order.flip(0)[:count]]]
            pictures["anomalies"] = stack_blocks(
                [
                    to_unit_interval(make_grid(block, nrow=8, pad_value=1.0), model.value_range)
                    for block in blocks
                ]
            )
            pictures["anomaly_histogram"] = histogram_image(
                scores[~gt_anomaly], scores[gt_anomaly], threshold
            )
        return pictures

    def interpolation(self, model: Autoencoder, images: Tensor, latents: Tensor) -> Tensor:
        """Rows of: image a, `steps` decoded codes from a's to b's latent, image b."""
        pairs = min(self.num_pairs, len(images) // 2)
        start, end = latents[0 : 2 * pairs : 2], latents[1 : 2 * pairs : 2]  # (P, D)
        weights = torch.linspace(0, 1, self.steps)[None, :, None]  # (1, S, 1)
        codes = start[:, None] + weights * (end - start)[:, None]  # (P, S, D)
        decoded = model.decode(codes.flatten(0, 1).to(model.device, model.dtype)).float().cpu()
        decoded = decoded.view(pairs, self.steps, *decoded.shape[1:])
        rows = torch.cat([images[0 : 2 * pairs : 2, None], decoded, images[1 : 2 * pairs : 2, None]], dim=1)
        grid = make_grid(rows.flatten(0, 1), nrow=self.steps + 2, pad_value=1.0)
        return to_unit_interval(grid, model.value_range)
