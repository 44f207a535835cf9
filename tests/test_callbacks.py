"""SampleGridCheckpoint: a PNG beside every checkpoint, of fixed images, gone with its checkpoint."""

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger

from ae_lightning.callbacks import ProgressBar, SampleGridCheckpoint
from ae_lightning.data import MNISTDataModule
from ae_lightning.errors import ConfigError
from ae_lightning.models import AE, VAE, VQVAE, ConditionalVAE, DenoisingAE
from tests.conftest import VAL_SIZE, grid_size, read_png


def fit(tmp_path: Path, data_dir: Path, model, callback: SampleGridCheckpoint, epochs: int = 2) -> Trainer:
    trainer = Trainer(
        default_root_dir=tmp_path,
        logger=TensorBoardLogger(tmp_path, name="run"),
        callbacks=[callback],
        max_epochs=epochs,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    trainer.fit(
        model,
        MNISTDataModule(
            data_dir=data_dir, val_size=VAL_SIZE, batch_size=16, value_range=model.model.value_range
        ),
    )
    return trainer


def test_every_checkpoint_has_its_grid_and_loses_it_with_it(tmp_path: Path, data_dir: Path) -> None:
    callback = SampleGridCheckpoint(monitor=None, save_top_k=1, save_last=False, filename="epoch={epoch}")
    fit(tmp_path, data_dir, AE(latent_dim=4, hidden_dims=[32]), callback)
    folder = Path(callback.dirpath)
    assert sorted(p.name for p in folder.iterdir()) == ["epoch=1.ckpt", "epoch=1.png"]  # epoch=0.* removed


def test_grid_shows_fixed_images_above_reconstructions_and_prior_samples(
    tmp_path: Path, data_dir: Path
) -> None:
    callback = SampleGridCheckpoint(
        monitor=None, save_top_k=-1, save_last=True, num_images=12, num_samples=16, filename="epoch={epoch}"
    )
    trainer = fit(tmp_path, data_dir, VAE(latent_dim=4, hidden_dims=[32]), callback)
    folder = Path(callback.dirpath)
    ckpts = sorted(folder.glob("*.ckpt"))
    assert [p.stem for p in ckpts] == ["epoch=0", "epoch=1", "last"]
    grids = [read_png(p.with_suffix(".png")) for p in ckpts]
    for grid in grids:
        assert grid.shape == (3, *grid_size(images=12, samples=16))
    cell = 30
    inputs = lambda grid: torch.cat([grid[:, 0 : cell + 2], grid[:, 2 * cell : 3 * cell + 2]], 1)  # noqa: E731
    recons = lambda grid: grid[:, cell : 2 * cell + 2]  # noqa: E731
    assert torch.equal(inputs(grids[0]), inputs(grids[1]))  # the same images every time
    assert not torch.equal(recons(grids[0]), recons(grids[1]))  # what the model made of them changed
    assert torch.equal(grids[1], grids[2])  # last.ckpt holds the weights of epoch 1
    # the inputs are the first validation images, in order
    first = trainer.datamodule.datasets["val"][0].inputs
    torch.testing.assert_close(inputs(grids[0])[0, 2:30, 2:30].float() / 255, first[0], atol=1 / 255, rtol=0)


def test_grid_goes_to_tensorboard_once_per_step(tmp_path: Path, data_dir: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    callback = SampleGridCheckpoint(monitor=None, save_top_k=-1, save_last=True)
    trainer = fit(tmp_path, data_dir, AE(latent_dim=4, hidden_dims=[32]), callback)
    events = EventAccumulator(trainer.log_dir, size_guidance={"images": 0}).Reload()
    images = events.Images("samples/grid")
    assert [image.step for image in images] == [5, 10]
    assert (images[0].height, images[0].width) == grid_size(images=16)


def test_last_link_links_the_grid_too(tmp_path: Path, data_dir: Path) -> None:
    callback = SampleGridCheckpoint(monitor="val/loss", save_top_k=1, save_last="link")
    fit(tmp_path, data_dir, AE(latent_dim=4, hidden_dims=[32]), callback, epochs=1)
    last_png = Path(callback.dirpath) / "last.png"
    assert last_png.is_symlink()
    assert last_png.resolve() == Path(callback.best_model_path).with_suffix(".png").resolve()


@pytest.mark.parametrize("kwargs", [{"num_images": 0}, {"nrow": 0}, {"num_samples": -1}])
def test_bad_grid_arguments_are_refused(kwargs) -> None:
    with pytest.raises(ConfigError, match="need num_images >= 1"):
        SampleGridCheckpoint(**kwargs)


def test_denoising_grid_adds_fixed_corrupted_images_and_their_reconstructions(tmp_path, data_dir) -> None:
    callback = SampleGridCheckpoint(monitor=None, save_top_k=-1, save_last=False, num_images=8)
    fit(tmp_path, data_dir, DenoisingAE(latent_dim=4, hidden_dims=[32], mask_prob=0.5, noise_std=0), callback)
    grids = [read_png(p) for p in sorted(Path(callback.dirpath).glob("*.png"))]
    assert len(grids) == 2 and grids[0].shape == (3, *grid_size(8, rows_per_image=4))
    cell = 30
    row = lambda grid, i: grid[:, i * cell + 2 : (i + 1) * cell]  # noqa: E731
    clean, corrupted = row(grids[0], 0), row(grids[0], 2)
    assert torch.equal(corrupted, row(grids[1], 2))  # the same corruption every time
    # masking only darkens: every corrupted pixel is the clean one or black, and many are black
    assert ((corrupted == clean) | (corrupted == 0)).all()
    assert (corrupted < clean).float().mean() > 0.1


def test_conditional_grid_reconstructs_with_the_true_labels_and_samples_a_row_per_class(
    tmp_path, data_dir
) -> None:
    callback = SampleGridCheckpoint(monitor=None, save_top_k=1, save_last=False, num_images=8)
    model = ConditionalVAE(latent_dim=4, hidden_dims=[32])
    trainer = fit(tmp_path, data_dir, model, callback, epochs=1)
    val = trainer.datamodule.datasets["val"]
    x, labels = val[torch.arange(8)].inputs, val.labels[:8]
    grid = read_png(next(Path(callback.dirpath).glob("*.png")))
    assert grid.shape == (3, *grid_size(8, samples=10 * 8))  # 10 class rows of 8
    model.eval()
    with torch.no_grad():
        right, wrong = model(x, labels), model(x, (labels + 1) % 10)
    shown = grid[0, 32:60, 2:30].float() / 255  # the first image's reconstruction
    assert (shown - right[0, 0]).abs().max() <= 1 / 255 + 1e-6
    assert (shown - wrong[0, 0]).abs().max() > 1 / 255


def test_model_without_prior_gets_reconstructions_only(tmp_path, data_dir) -> None:
    callback = SampleGridCheckpoint(monitor=None, save_top_k=1, save_last=False, num_images=8, num_samples=32)
    fit(tmp_path, data_dir, VQVAE(latent_dim=8, code_dim=4, codebook_size=16, hidden_dims=[32]), callback, 1)
    grid = read_png(next(Path(callback.dirpath).glob("*.png")))
    assert grid.shape == (3, *grid_size(8))  # no sample block, though num_samples asks for 32


def test_the_progress_bar_refuses_a_loss_interval_below_one_step() -> None:
    with pytest.raises(ConfigError, match="loss_every_n_steps must be at least 1 step, got 0"):
        ProgressBar(loss_every_n_steps=0)


@pytest.mark.parametrize(
    "method, parameters",
    [
        ("_save_checkpoint", ["self", "trainer", "filepath"]),
        ("_remove_checkpoint", ["self", "trainer", "filepath"]),
        ("_link_checkpoint", ["trainer", "filepath", "linkpath"]),
        ("_save_last_checkpoint", ["self", "trainer", "monitor_candidates"]),
    ],
)
def test_the_private_checkpoint_methods_overridden_are_still_lightnings(method, parameters) -> None:
    """SampleGridCheckpoint overrides these (Lightning has no public hook for a checkpoint file written,
    removed or linked): they must exist with these arguments, or the grids silently stop (the tests above
    check that grids are written, removed and linked with their checkpoints)."""
    import inspect

    from lightning.pytorch.callbacks import ModelCheckpoint

    assert method in vars(ModelCheckpoint), f"Lightning no longer has ModelCheckpoint.{method}"
    assert list(inspect.signature(vars(ModelCheckpoint)[method]).parameters) == parameters
