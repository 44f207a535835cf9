"""`cli.py export`: LightningCLI's commands are the Trainer's methods, so the Trainer gets one more."""

from pathlib import Path
from typing import Any, Literal

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from ae_lightning.autoencoders import Reconstructs
from ae_lightning.errors import ConfigError
from ae_lightning.export.writer import Format, export_model
from ae_lightning.files import file_sha256

#: what `sample --sampler` takes (`ae_lightning.samplers.SAMPLERS`)
SamplerName = Literal[
    "normal", "gmm", "two_stage", "maf", "iaf", "pixelcnn", "vamp", "hypersphere", "poincare", "rhvae"
]


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
        samplers: list[SamplerName] | None = None,
    ) -> Path:
        """Export a checkpoint's model: its encoder, decoder and anomaly scorer in ONNX or TorchScript.

        Writes `encoder`, `decoder` and `scorer` (`.onnx` or `.pt`), each with a dynamic batch dimension, and
        `model.json` (input shape and value range, how to map uint8 pixels into it, latent size, threshold,
        the anomaly maps' scale, class names, the checkpoint's SHA-256) into the folder `output`. The scorer
        of a model that localises gives each image's anomaly map too (`score --maps` draws them).

        Args:
            model: the LightningModule of the config (its weights come from `ckpt_path`).
            datamodule: the config's datamodule (for the class names and how images were fitted).
            ckpt_path: the checkpoint to export: a path, or `last` (the newest run's last.ckpt).
            format: `onnx` (needs `pip install -e ".[export]"`) or `torchscript`.
            output: the folder to write; an existing one is refused unless `overwrite`.
            overwrite: replace an existing `output` folder.
            samplers: post-hoc samplers to ship with the decoder (`sample --sampler`), each as a graph
                `sampler_<name>` from N(0, 1) noise to codes (`model.json` says its noise size and how
                to decode): normal, gmm, two_stage, maf, iaf, pixelcnn, vamp, hypersphere; a fitted one as
                `sample` fitted it for this checkpoint.
        """
        path = self._load_weights(model, ckpt_path, "export")
        extra: dict[str, Any] = {
            "checkpoint": {"path": str(ckpt_path), "sha256": file_sha256(ckpt_path)},
            "data": _data_description(datamodule),
        }
        binarized = bool(extra["data"].get("binarize"))
        shipped = {}
        if samplers:
            from ae_lightning.samplers.run import exportable

            digest = extra["checkpoint"]["sha256"]
            shipped = {name: exportable(name, model.model, path, digest) for name in dict.fromkeys(samplers)}
        written = export_model(
            model.model,
            format,
            output,
            model.anomaly_threshold,
            extra,
            overwrite,
            binarized,
            shipped,
            map_calibration=model.evaluator.map_calibration,
        )
        decoder = isinstance(model.model, Reconstructs)
        parts = "encoder, decoder and scorer" if decoder else "encoder and scorer"
        rank_zero_info(f"Exported the {parts} ({format}) of {ckpt_path} to {written}")
        return written

    def sample(
        self,
        model: LightningModule,
        datamodule: LightningDataModule | None = None,
        ckpt_path: str | None = None,
        sampler: SamplerName = "normal",
        num_samples: int = 64,
        output: str = "samples",
        fid: bool = False,
        seed: int = 0,
        sampler_options: dict[str, Any] | None = None,
        overwrite: bool = False,
    ) -> Path:
        """Generate images from a checkpoint's model with a post-hoc sampler.

        Writes `grid.png` (the first 64 samples), `samples.npz` (`images` in the data's range, `codes`) and
        `sample.json` (what was drawn, and with `fid` the FID, precision and recall) into the folder
        `output`. A sampler that is fitted (gmm) is fitted on the codes of the training split and saved
        beside the checkpoint as `sampler-<name>-<checkpoint SHA-256>.pt`, reused by later calls on the
        same checkpoint with the same options.

        Args:
            model: the LightningModule of the config (its weights come from `ckpt_path`).
            datamodule: the config's datamodule (training codes to fit on, test images for the FID).
            ckpt_path: the checkpoint: a path, or `last` (the newest run's last.ckpt).
            sampler: `normal` (N(0, I) codes), `gmm` (a Gaussian mixture fitted on the codes), `two_stage`
                (a second VAE fitted on the codes), `maf` or `iaf` (a masked or inverse autoregressive flow
                fitted on the codes), `vamp` (a
                VampVAE's prior), `hypersphere` (uniform on the sphere: SVAE), `poincare` (a PoincareVAE's
                prior), `rhvae` (HMC on an RHVAE's learnt metric), `pixelcnn` (an autoregressive prior fitted
                on the codebook indices of a VQVAE or HRQVAE).
            num_samples: images to draw.
            output: the folder to write; an existing one is refused unless `overwrite`.
            fid: also measure the samples' FID against the test split (the data's feature classifier, as
                `test/fid`; 10,000 samples compare with the models' `test/fid`).
            seed: seeds the draws (the same seed, the same samples).
            sampler_options: the sampler's own arguments, e.g. `{"num_components": 20}` for gmm.
            overwrite: replace an existing `output` folder.
        """
        from ae_lightning.samplers import SAMPLERS
        from ae_lightning.samplers.run import sample_checkpoint

        path = self._load_weights(model, ckpt_path, "sample")
        autoencoder = model.model.to(self.strategy.root_device).eval()
        written = sample_checkpoint(
            autoencoder, datamodule, path, SAMPLERS[sampler], dict(sampler_options or {}), num_samples,
            Path(output), fid, seed, overwrite,
        )  # fmt: skip
        rank_zero_info(f"Drew {num_samples} samples of {ckpt_path} with the {sampler} sampler into {written}")
        return written

    def _load_weights(self, model: LightningModule, ckpt_path: str | None, command: str) -> Path:
        """Loads a checkpoint's weights (and threshold) into `model`; the checkpoint's path."""
        if ckpt_path is None:
            raise ConfigError(
                f"{command} needs --ckpt_path (a checkpoint file, or `last` for the newest run's)"
            )
        checkpoint = self.strategy.checkpoint_io.load_checkpoint(ckpt_path)
        if "state_dict" not in checkpoint:
            raise ConfigError(
                f"--ckpt_path {ckpt_path} holds no weights (no state_dict): {command} a training checkpoint"
            )
        model.on_load_checkpoint(checkpoint)
        model.load_state_dict(checkpoint["state_dict"])
        return Path(ckpt_path)


def _data_description(datamodule: LightningDataModule | None) -> dict[str, Any]:
    """What the datamodule says about its data (`AutoencoderDataModule.export_description`)."""
    from ae_lightning.data.contract import AutoencoderDataModule

    if isinstance(datamodule, AutoencoderDataModule):
        return datamodule.export_description()
    return {"datamodule": type(datamodule).__name__ if datamodule else None, "class_names": None}
