"""`predict` writes its outputs to files in the run folder: one merged file per run, in dataset order."""

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import Tensor

from ae_lightning.callbacks.gather import gather_shares
from ae_lightning.data.contract import AutoencoderDataModule
from ae_lightning.errors import ConfigError
from ae_lightning.files import atomic_write
from ae_lightning.runs import run_folder

Format = Literal["pt", "csv", "npz"]
FORMATS: tuple[str, ...] = ("pt", "csv", "npz")


def merge_predictions(
    batches: Sequence[dict[str, Tensor]], indices: Sequence[Sequence[int]]
) -> dict[str, Tensor]:
    """Concatenates per-batch prediction dicts (on CPU); `index`, the dataset index of every row, is the
    batches' own (`Batch.index`) or else taken from `indices`, the batch indices Lightning recorded."""
    merged = {key: torch.cat([batch[key].detach().cpu() for batch in batches]) for key in batches[0]}
    if "index" not in merged:
        merged["index"] = torch.tensor([i for batch in indices for i in batch], dtype=torch.long)
    return merged


def order_by_index(parts: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Joins the predictions of several ranks and sorts the rows by dataset index."""
    parts = [part for part in parts if part]
    joined = {key: torch.cat([part[key] for part in parts]) for key in parts[0]}
    order = joined["index"].argsort()
    return {key: value[order] for key, value in joined.items()}


def write_csv(predictions: dict[str, Tensor | list[str]], path: Path) -> None:
    """One row per sample: index, path, labels, anomaly_score, pred_anomaly (those present), latent_0 ..."""
    scalars = [
        key for key in ("index", "path", "labels", "anomaly_score", "pred_anomaly") if key in predictions
    ]
    latent = predictions["latent"].float().flatten(1)
    header = scalars + [f"latent_{unit}" for unit in range(latent.shape[1])]
    columns = [list(predictions[key]) if key == "path" else predictions[key].tolist() for key in scalars]
    with atomic_write(path, "w") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        for row, codes in enumerate(latent.tolist()):
            writer.writerow([column[row] for column in columns] + codes)


class PredictionWriter(BasePredictionWriter):
    """Writes what `predict` computed, for every sample in dataset order, to the run folder.

    `predictions.pt` (always): a dict of tensors `latent` (N, latent_dim; the posterior mean for a VAE),
    `anomaly_score` (N,), `labels` (N,) when the dataset has labels, `pred_anomaly` (N,) when the model holds
    an anomaly threshold, `index` (N,), the position of each row in the predicted dataset, `path` (a list
    of N file names) when the images came from files (`ImageFolderDataModule`), and `anomaly_map` (N, H, W)
    for a model that localises (the npz form holds it too; the csv form leaves it out). Load it with
    `torch.load(path)`. Under DDP each rank predicts a disjoint share; the shares are gathered by index
    and written once, by global rank zero, so the file is the one a single process writes.

    Args:
        formats: further forms of the same table besides `predictions.pt`: `csv` (`predictions.csv`, one
            row per sample, read by pandas, R or a spreadsheet without torch) and `npz`
            (`predictions.npz`, numpy arrays under the same names, `numpy.load` with no pickle).
        filename: stem of the files (`predictions` gives `predictions.pt`, `predictions.csv`, ...).
    """

    def __init__(self, formats: Sequence[Format] = ("csv",), filename: str = "predictions") -> None:
        super().__init__(write_interval="epoch")
        unknown = [form for form in formats if form not in FORMATS]
        if unknown:
            raise ConfigError(f"unknown prediction format(s) {unknown}: choose from {list(FORMATS)}")
        if not filename or "/" in filename:
            raise ConfigError(f"filename must be a plain file stem such as 'predictions', got {filename!r}")
        self.formats = [form for form in dict.fromkeys(formats) if form != "pt"]
        self.filename = filename
        self.written: list[Path] = []  # the files of the last predict call, on global rank zero

    def write_on_epoch_end(
        self,
        trainer: "pl.Trainer",
        pl_module: "pl.LightningModule",
        predictions: Sequence[Any],
        batch_indices: Sequence[Any],
    ) -> None:
        # Lightning gives the indices per dataloader always, the predictions so only for several loaders
        if len(batch_indices) > 1:
            raise ConfigError("PredictionWriter writes the predictions of one dataloader; got several")
        if predictions and isinstance(predictions[0], list):
            predictions = predictions[0]
        batch_indices = batch_indices[0] if batch_indices else []
        local = merge_predictions(predictions, batch_indices) if predictions else {}
        folder = Path(run_folder(trainer))  # collective: every rank calls it
        parts = gather_shares(trainer, local)
        if not trainer.is_global_zero:
            return
        merged: dict[str, Any] = order_by_index(parts)
        datamodule = trainer.datamodule
        names = datamodule.sample_names() if isinstance(datamodule, AutoencoderDataModule) else None
        if names is not None:
            merged["path"] = [names[i] for i in merged["index"].tolist()]
        folder.mkdir(parents=True, exist_ok=True)
        self.written = [folder / f"{self.filename}.pt"]
        with atomic_write(self.written[0]) as file:
            torch.save(merged, file)
        for form in self.formats:
            path = folder / f"{self.filename}.{form}"
            if form == "csv":
                write_csv(merged, path)
            else:
                import numpy as np

                with atomic_write(path) as file:
                    np.savez(file, **{key: np.asarray(value) for key, value in merged.items()})
            self.written.append(path)
        files = ", ".join(map(str, self.written))
        rank_zero_info(f"Predictions of {len(merged['index'])} samples written to {files}")
