"""The LightningModules: built from the config's arguments, fitted by a Trainer, reloaded, old checkpoints."""

import pytest
import torch

from ae_lightning.autoencoders import Denoising, Generative, Reconstructs
from ae_lightning.models import AutoencoderModule
from tests.test_autoencoders import fixed_batch, tensor_inputs
from tests.variants import CASES, IDS


def make(cls: type[AutoencoderModule], extra: dict, **kwargs) -> AutoencoderModule:
    torch.manual_seed(0)
    return cls(**{"latent_dim": 8, "hidden_dims": [64], **extra, **kwargs})


@pytest.mark.parametrize("cls, extra", CASES, ids=IDS)
def test_hyperparameters_rebuild_the_same_model(cls, extra) -> None:
    model = make(cls, extra, value_range=(-1.0, 1.0))
    rebuilt = cls(**model.hparams)
    rebuilt.load_state_dict(model.state_dict())
    batch = fixed_batch((-1.0, 1.0), count=4)
    given = tensor_inputs(model.model, batch)
    torch.testing.assert_close(rebuilt.eval()(batch.inputs, *given), model.eval()(batch.inputs, *given))


@pytest.mark.parametrize("cls, extra", CASES, ids=IDS)
def test_fits_writes_a_grid_and_reloads_from_its_checkpoint(cls, extra, data_dir, tmp_path) -> None:
    """A short fit through Lightning: finite losses, a checkpoint with its PNG grid, equal outputs after a
    reload from the checkpoint."""
    from lightning.pytorch import Trainer

    from ae_lightning.callbacks import SampleGridCheckpoint
    from ae_lightning.data import MNISTDataModule
    from tests.conftest import VAL_SIZE, grid_size, read_png

    model = make(cls, extra, hidden_dims=[32])
    callback = SampleGridCheckpoint(
        monitor=None, save_top_k=1, save_last=False, num_images=8, num_samples=16, filename="fitted"
    )
    trainer = Trainer(
        default_root_dir=tmp_path,
        logger=False,
        callbacks=[callback],
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=2,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    datamodule = MNISTDataModule(data_dir=str(data_dir), val_size=VAL_SIZE, batch_size=16)
    trainer.fit(model, datamodule)
    assert torch.isfinite(trainer.callback_metrics["val/loss"])

    ckpt = tmp_path / "checkpoints" / "fitted.ckpt"
    model.eval()
    torch_model = model.model
    # a model lays its samples out itself (the CVAE: a row per class)
    samples = len(torch_model.grid_samples(16, nrow=8)) if isinstance(torch_model, Generative) else 0
    # images above their reconstructions (a denoiser adds two rows); the images alone without a decoder
    rows_per_image = (
        4 if isinstance(torch_model, Denoising) else 2 if isinstance(torch_model, Reconstructs) else 1
    )
    assert read_png(ckpt.with_suffix(".png")).shape == (3, *grid_size(8, samples, rows_per_image))

    reloaded = cls.load_from_checkpoint(ckpt).eval()
    batch = fixed_batch(count=6)
    given = tensor_inputs(torch_model, batch)
    torch.testing.assert_close(reloaded(batch.inputs, *given), model(batch.inputs, *given))


def test_a_module_and_datamodule_given_the_same_range_as_tuples_fit_with_a_logger(data_dir, tmp_path) -> None:
    """Lightning refuses hyperparameters that differ between module and datamodule: both hold the shape and
    range as lists, whatever the Python caller passed."""
    from lightning.pytorch import Trainer
    from lightning.pytorch.loggers import CSVLogger

    from ae_lightning.data import MNISTDataModule
    from ae_lightning.models import VAE
    from tests.conftest import VAL_SIZE

    model = VAE(latent_dim=4, hidden_dims=[16], value_range=(-1, 1), image_shape=(1, 28, 28))
    datamodule = MNISTDataModule(
        data_dir=str(data_dir), val_size=VAL_SIZE, batch_size=16, value_range=(-1, 1)
    )
    trainer = Trainer(
        logger=CSVLogger(tmp_path), max_steps=2, limit_val_batches=1, accelerator="cpu",
        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, datamodule)
    assert model.hparams["value_range"] == [-1.0, 1.0] and model.hparams["image_shape"] == [1, 28, 28]
    assert trainer.global_step == 2
