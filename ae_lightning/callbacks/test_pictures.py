"""Pictures of a tested model: latent interpolations, a 2-d latent scatter, and for one-class runs the ROC and
precision-recall curves, a histogram of the anomaly scores and the most and least anomalous test images. The
callback collects what is drawn (`plots` draws it with matplotlib)."""

from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from PIL import Image
from torch import Tensor
from torchvision.utils import make_grid, save_image

from ae_lightning.autoencoders import (
    Autoencoder,
    Conditional,
    Generative,
    LatentModel,
    Localizes,
    Reconstructs,
)
from ae_lightning.batch import Batch
from ae_lightning.callbacks.gather import Collected
from ae_lightning.callbacks.images import autoencoder_of, log_image
from ae_lightning.data.contract import AutoencoderDataModule
from ae_lightning.errors import ConfigError
from ae_lightning.files import atomic_write
from ae_lightning.runs import run_folder
from ae_lightning.value_range import to_unit_interval


def to_tensor(image: Image.Image) -> Tensor:
    """PIL RGB image -> (3, H, W) float in [0, 1]."""
    data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return data.view(image.height, image.width, 3).permute(2, 0, 1).float() / 255


def select_rows(batch: Batch, rows: Tensor) -> Batch:
    """The items at `rows` (K,) of a batch, as a batch of K."""
    picked = {field.name: getattr(batch, field.name) for field in fields(Batch)}
    return Batch(**{name: None if value is None else value[rows] for name, value in picked.items()})


def validation_map_range(pl_module: "pl.LightningModule") -> tuple[float, float] | None:
    """The colour scale of the heat maps: the (low, high) of the normal validation images' maps
    (`evaluator.map_calibration`), or None (nothing validated), and then the maps drawn set it."""
    calibration = pl_module.evaluator.map_calibration
    return None if calibration is None else calibration.scale


def keep_extremes(
    kept: dict[str, Tensor], new: dict[str, Tensor], k: int, largest: bool
) -> dict[str, Tensor]:
    """The `k` rows of `kept` and `new` (dicts of row-aligned tensors with `scores` (N,)) of the largest (or
    smallest) scores, sorted that way."""
    merged = {name: torch.cat([kept[name], value]) if kept else value for name, value in new.items()}
    order = merged["scores"].topk(min(k, len(merged["scores"])), largest=largest).indices
    return {name: value[order] for name, value in merged.items()}


class Extremes:
    """The `k` highest- and the `k` lowest-scoring items seen, with what is drawn of each, kept batch by batch
    where they were computed: at most 2k items, whatever the size of the test set."""

    def __init__(self, k: int) -> None:
        self.k = k
        #: row-aligned tensors by name, `scores` (<= k,) from the highest down
        self.most: dict[str, Tensor] = {}
        #: the same, `scores` from the lowest up
        self.least: dict[str, Tensor] = {}

    def candidates(self, scores: Tensor) -> tuple[Tensor, Tensor]:
        """The rows of a batch's scores (B,) that may join the kept ones: its own k highest (descending) and
        its k lowest (ascending); only these need their reconstructions and maps computed."""
        k = min(self.k, len(scores))
        return scores.topk(k).indices, scores.topk(k, largest=False).indices

    def add(self, most: dict[str, Tensor], least: dict[str, Tensor]) -> None:
        """Merges candidates for the highest and for the lowest scores (each row-aligned, with `scores`)."""
        self.most = keep_extremes(self.most, most, self.k, largest=True)
        self.least = keep_extremes(self.least, least, self.k, largest=False)


def section(data: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries of `data` named `<prefix>/<name>`, by name."""
    return {
        name.removeprefix(f"{prefix}/"): value
        for name, value in data.items()
        if name.startswith(f"{prefix}/")
    }


class TestPictures(Callback):
    """At the end of `test`, draws what applies to the model and the data, as PNGs in the run folder and to
    the loggers that take images (key `test/<name>`):

    - `interpolation.png`, models with a prior (`Generative`, not `Conditional`): one row per pair of test
      images (the 2i-th and (2i+1)-th), `steps` codes decoded evenly spaced between their posterior means, the
      two images at the ends;
    - `latent_scatter.png`, 2-d latents with labels: the test codes, axes z1 and z2, coloured by class;
    - `roc_pr.png`, one-class runs (batches with `gt_anomaly`) with both normal and anomalous test images: the
      ROC curve (AUROC in the legend) and the precision-recall curve (AUPR, the anomalies' base rate dashed),
      the threshold's operating point marked on both;
    - `anomaly_histogram.png`, one-class runs: the counts of the scores of normal and anomalous test images,
      over the 0.5th to 99.5th percentile, with the threshold;
    - `anomalies.png`, one-class image runs: a row for each of the `num_extremes` most anomalous test images
      and then each of the least anomalous: the input, its reconstruction (models with a decoder), its anomaly
      map over it on one colour scale (that of validation when the evaluator has one) with a colorbar (models
      that localise), its ground-truth mask (data with masks); each captioned with rank, score, truth, class.

    Only what is drawn is kept: a score, target and label per image, the first `2 * num_pairs` images, the
    codes when they are 2-d, and the images of the `num_extremes` highest and lowest scores so far on each
    device. Test batches are gathered from every device and drawn by global rank zero.

    Args:
        num_pairs: rows of the interpolation grid.
        steps: codes decoded between the two images of a row (the row shows them plus the two images).
        num_extremes: rows of the anomaly picture for the most anomalous images, and as many for the least.
    """

    __test__ = False  # a callback, not a pytest test class

    def __init__(self, num_pairs: int = 8, steps: int = 8, num_extremes: int = 4) -> None:
        if num_pairs < 1 or steps < 1 or num_extremes < 1:
            raise ConfigError(
                f"need num_pairs, steps and num_extremes >= 1, got {num_pairs}, {steps} and {num_extremes}"
            )
        self.num_pairs = num_pairs
        self.steps = steps
        self.num_extremes = num_extremes
        self.written: list[Path] = []
        self._start()

    def on_test_epoch_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._start()

    def _start(self) -> None:
        """Forgets what an earlier test collected."""
        self._collected = Collected()
        self._extremes = Extremes(self.num_extremes)
        self._first_count = 0  # test images kept for the interpolation

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
        parts: dict[str, Tensor] = {}
        images = batch.inputs.ndim == 4
        interpolates = isinstance(model, Generative) and not isinstance(model, Conditional) and images
        if interpolates and self._first_count < 2 * self.num_pairs:
            take = 2 * self.num_pairs - self._first_count
            parts["first/images"], parts["first/latents"] = batch.inputs[:take], model.latent(batch)[:take]
            self._first_count += len(parts["first/images"])
        if model.latent_dim == 2 and batch.labels is not None:
            parts["latents"] = model.latent(batch)
        if batch.labels is not None and (batch.gt_anomaly is not None or "latents" in parts):
            parts["labels"] = batch.labels
        if batch.gt_anomaly is not None:
            parts["scores"], parts["gt_anomaly"] = model.anomaly_score(batch), batch.gt_anomaly
            if images:
                self._keep_extremes(model, batch, parts["scores"])
        self._collected.add(parts)

    def _keep_extremes(self, model: LatentModel, batch: Batch, scores: Tensor) -> None:
        """Offers the batch's highest and lowest scores, with what is drawn of them, to the kept extremes."""
        most, least = self._extremes.candidates(scores)
        chosen = torch.cat([most, least])
        picked = select_rows(batch, chosen)
        rows = {"scores": scores[chosen], "images": picked.inputs, "gt_anomaly": picked.gt_anomaly}
        if picked.labels is not None:
            rows["labels"] = picked.labels
        if isinstance(model, Reconstructs):
            rows["reconstructions"] = model.reconstruct(picked)
        if isinstance(model, Localizes) and model.localizes():
            rows["maps"] = model.anomaly_map(picked)
        if picked.gt_mask is not None:
            rows["gt_masks"] = picked.gt_mask
        split = len(most)
        self._extremes.add({n: v[:split] for n, v in rows.items()}, {n: v[split:] for n, v in rows.items()})

    def on_test_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        for side, kept in (("most", self._extremes.most), ("least", self._extremes.least)):
            if kept:
                self._collected.add({f"{side}/{name}": value for name, value in kept.items()})
        gathered = self._collected.gather(trainer)
        folder = Path(run_folder(trainer))  # collective: every rank calls it
        if not trainer.is_global_zero or not gathered:
            return
        model, threshold = autoencoder_of(pl_module), pl_module.anomaly_threshold
        datamodule = trainer.datamodule
        names = datamodule.class_names if isinstance(datamodule, AutoencoderDataModule) else None
        pictures = self.draw(model, gathered, threshold, validation_map_range(pl_module), names)
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
        self,
        model: LatentModel,
        data: dict[str, Tensor],
        threshold: float | None = None,
        map_range: tuple[float, float] | None = None,
        class_names: Sequence[str] | None = None,
    ) -> dict[str, Tensor]:
        """The pictures that apply to what was gathered (`data`, by name), each (3, H, W) in [0, 1]; rows of
        images are captioned with their class's name from `class_names` (by label) where given."""
        from ae_lightning.callbacks import plots  # matplotlib loads when there is something to draw

        pictures: dict[str, Tensor] = {}
        if len(data.get("first/images", ())) >= 2:
            pictures["interpolation"] = self.interpolation(model, data["first/images"], data["first/latents"])
        if "latents" in data and data["latents"].shape[1] == 2:
            pictures["latent_scatter"] = plots.scatter_picture(data["latents"], data["labels"])
        if "scores" in data:
            scores, gt_anomaly = data["scores"], data["gt_anomaly"].bool()
            if gt_anomaly.any() and not gt_anomaly.all():
                pictures["roc_pr"] = plots.roc_pr_picture(scores, gt_anomaly, threshold)
            normal, anomalous = scores[~gt_anomaly], scores[gt_anomaly]
            pictures["anomaly_histogram"] = plots.histogram_picture(normal, anomalous, threshold)
        if "most/scores" in data:
            # the devices' candidates: the highest and lowest of them are the highest and lowest of all
            extremes = Extremes(self.num_extremes)
            extremes.add(section(data, "most"), section(data, "least"))
            rows = {name: torch.cat([extremes.most[name], extremes.least[name]]) for name in extremes.most}
            shown = {
                name: to_unit_interval(rows[name], model.value_range)
                for name in ("images", "reconstructions")
                if name in rows
            }
            pictures["anomalies"] = plots.anomalies_picture(
                shown["images"],
                rows["scores"],
                rows["gt_anomaly"].bool(),
                num_most=len(extremes.most["scores"]),
                labels=rows.get("labels"),
                reconstructions=shown.get("reconstructions"),
                maps=rows.get("maps"),
                map_range=map_range,
                gt_masks=rows["gt_masks"].bool() if "gt_masks" in rows else None,
                class_names=class_names,
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
