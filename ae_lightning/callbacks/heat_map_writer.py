"""`predict` draws the anomaly map of every predicted image as a heat map, in the run folder."""

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

from ae_lightning.autoencoders import Localizes
from ae_lightning.batch import Batch
from ae_lightning.callbacks.images import autoencoder_of
from ae_lightning.data.contract import AutoencoderDataModule
from ae_lightning.errors import ConfigError
from ae_lightning.heat_maps import heat_map_name, write_heat_maps
from ae_lightning.runs import run_folder
from ae_lightning.value_range import to_unit_interval

NO_CALIBRATION = (
    "no map calibration in the checkpoint (validated without one-class data): each heat map is scaled to its "
    "own range, so they do not compare"
)


class HeatMapWriter(Callback):
    """Writes the heat map of every predicted image, one PNG each, under `<run folder>/<folder>/`.

    A heat map is the image beside its anomaly map in matplotlib's `inferno` colours (dark: normal).
    Each PNG is named `<index>_<file stem>` for images read from files, else `<index>` (the dataset index,
    zero-padded). The colours run from dark (the lowest pixel of the normal validation images' maps, saved in
    the checkpoint) to bright (their highest, and above), the same scale for every image, so the maps
    compare; a checkpoint validated without one-class data has no such scale, and then each map is scaled to
    its own range. A model that gives no anomaly map (Deep SVDD, vector data) writes nothing. Under DDP each
    process writes the images it predicted. Every run has one, off unless `write` (`--heat_maps.write true`;
    `configs/folder_anomaly.yaml` turns it on, the MNIST configs leave it off: 10,000 files).

    Args:
        write: write the heat maps at `predict`.
        folder: the subfolder of the run folder to write into.
        max_images: write the heat maps of the items of dataset index below this only (None: of all).
    """

    def __init__(
        self, write: bool = False, folder: str = "anomaly_maps", max_images: int | None = None
    ) -> None:
        if not folder or "/" in folder or folder.startswith("."):
            raise ConfigError(f"folder must be a plain folder name such as 'anomaly_maps', got {folder!r}")
        if max_images is not None and max_images < 1:
            raise ConfigError(f"max_images must be at least 1, or null for every image, got {max_images}")
        self.write, self.folder, self.max_images = write, folder, max_images
        self.output: Path | None = None  # the folder of the current predict call; None: nothing to draw
        self._names: list[str] | None = None
        self._scale: tuple[float | None, float | None] = (None, None)

    def on_predict_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if not self.write:
            self.output = None
            return
        folder = Path(run_folder(trainer)) / self.folder  # collective: every rank calls it
        model = autoencoder_of(pl_module)
        if not (isinstance(model, Localizes) and model.localizes()):
            self.output = None
            rank_zero_info(f"HeatMapWriter: {type(model).__name__} gives no anomaly map here, so none drawn")
            return
        self.output = folder
        datamodule = trainer.datamodule
        self._names = datamodule.sample_names() if isinstance(datamodule, AutoencoderDataModule) else None
        calibration = pl_module.evaluator.map_calibration
        if calibration is None:
            rank_zero_warn(NO_CALIBRATION)
            self._scale = (None, None)
        else:
            self._scale = calibration.scale

    def on_predict_batch_end(
        self,
        trainer: "pl.Trainer",
        pl_module: "pl.LightningModule",
        outputs: Any,
        batch: Batch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self.output is None:
            return
        if batch.index is None:
            raise ConfigError(
                "HeatMapWriter names each heat map by its dataset index, and this datamodule's batches carry "
                "none (Batch.index): use a datamodule of ae_lightning.data"
            )
        indices = batch.index.tolist()
        keep = [
            row for row, index in enumerate(indices) if self.max_images is None or index < self.max_images
        ]
        if not keep:
            return
        model = autoencoder_of(pl_module)
        images = to_unit_interval(batch.inputs[keep].float(), model.value_range).cpu()
        maps = outputs["anomaly_map"][keep].float().cpu()
        paths = self._names
        names = [heat_map_name(indices[row], None if paths is None else paths[indices[row]]) for row in keep]
        write_heat_maps(self.output, names, images, maps, *self._scale)

    def on_predict_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self.output is not None:
            rank_zero_info(f"Heat maps of the anomaly maps written to {self.output}")
