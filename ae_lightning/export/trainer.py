"""`cli.py export`: LightningCLI's commands are the Trainer's methods, so the Trainer gets one more."""

import hashlib
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from ae_lightning.errors import ConfigError
from ae_lightning.export.writer import Format, export_model


class AutoencoderTrainer(Trainer):
    """Lightning's Trainer with `export` (Lightning's documented way to add a LightningCLI subcommand: a
    Trainer method, so the command takes `--config`, `--model.*`, `--data.*` and `--ckpt_path` as the
    others do)."""

    def export(
        self,
        model: LightningModule,
        datamodule: LightningDataModule | None = None,
        ckpt_path: str | None = None,
        format: Format = "onnx",
        output: str = "exported",
        overwrite: bool = False,
    ) -> Path:
        """Export a checkpoint's model: its encoder, decoder and anomaly scorer in ONNX or TorchScript.

        Writes `encoder`, `decoder` and `scorer` (`.onnx` or `.pt`), each with a dynamic batch dimension, and
        `model.json` (input shape and value range, how to map uint8 pixels into it, latent size, threshold,
        class names, the checkpoint's SHA-256) into the folder `output`.

        Args:
            model: the LightningModule of the config (its weights come from `ckpt_path`).
            datamodule: the config's datamodule (for the class names and how images were fitted).
            ckpt_path: the checkpoint to export: a path, or `last` (the newest run's last.ckpt).
            format: `onnx` (needs `pip install -e ".[export]"`) or `torchscript`.
            output: the folder to write; an existing one is refused unless `overwrite`.
            overwrite: replace an existing `output` folder.
        """
        if ckpt_path is None:
            raise ConfigError("export needs --ckpt_path (a checkpoint file, or `last` for the newest run's)")
        checkpoint = self.strategy.checkpoint_io.load_checkpoint(ckpt_path)
        if "state_dict" not in checkpoint:
            raise ConfigError(
                f"--ckpt_path {ckpt_path} holds no weights (no state_dict): export a training checkpoint"
            )
        model.on_load_checkpoint(checkpoint)
        model.load_state_dict(checkpoint["state_dict"])
        extra: dict[str, Any] = {
            "checkpoint": {"path": str(ckpt_path), "sha256": _sha256(Path(ckpt_path))},
            "data": _data_description(datamodule),
        }
        binarized = bool(extra["data"].get("binarize"))
        written = export_model(
            model.model, format, output, model.anomaly_threshold, extra, overwrite, binarized
        )
        rank_zero_info(f"Exported the encoder, decoder and scorer ({format}) of {ckpt_path} to {written}")
        return written


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def _data_description(datamodule: LightningDataModule | None) -> dict[str, Any]:
    """What the datamodule says about its data (`AutoencoderDataModule.export_description`)."""
    from ae_lightning.data.contract import AutoencoderDataModule

    if isinstance(datamodule, AutoencoderDataModule):
        return datamodule.export_description()
    return {"datamodule": type(datamodule).__name__ if datamodule else None, "class_names": None}
