"""A ModelCheckpoint that writes, next to each checkpoint `X.ckpt`, a PNG `X.png` of what the model does."""

from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader
from torchvision.utils import make_grid, save_image

from ae_lightning.errors import ConfigError
from ae_lightning.files import atomic_write
from ae_lightning.models.base import images_of
from ae_lightning.value_range import to_unit_interval

#: gap, in pixels, between the reconstruction block and the sample block of a grid
_BLOCK_GAP = 6


def grid_path(checkpoint_path: str | Path) -> str:
    """`dir/X.ckpt` -> `dir/X.png`."""
    return str(Path(checkpoint_path).with_suffix(".png"))


class SampleGridCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that writes, next to each checkpoint `X.ckpt`, a PNG grid `X.png`.

    The grid shows rows of fixed validation images, each above its reconstruction (denoising models add a
    row of the images corrupted with a fixed seed and a row of their reconstructions), and for generative
    models (those with a `sample` method) a block of images decoded from fixed prior noise, so grids compare
    across epochs; a model with `samples_for_grid(num_samples, nrow, generator)` lays that block out itself
    (the conditional VAE: one row per class). Models without `sample` (AE, VQ-VAE) show reconstructions
    only. The grid is also handed to the attached loggers that take images. Written on global rank zero only;
    a grid goes when its checkpoint is removed.

    Args:
        num_images: how many validation images (the first of the validation set) to show.
        num_samples: how many prior samples to show (generative models only; the conditional VAE shows one
            row of `nrow` per class instead).
        nrow: images per row.
        sample_seed: seed of the fixed prior noise.
        monitor, mode, save_top_k, save_last, filename, auto_insert_metric_name, **kwargs:
            as in ModelCheckpoint (defaults: keep the 3 best by `val/loss`, and `last`).
    """

    def __init__(
        self,
        num_images: int = 16,
        num_samples: int = 32,
        nrow: int = 8,
        sample_seed: int = 0,
        monitor: str | None = "val/loss",
        mode: str = "min",
        save_top_k: int = 3,
        save_last: bool | Literal["link"] | None = True,
        filename: str | None = "epoch={epoch}-step={step}-val_loss={val/loss:.2f}",
        auto_insert_metric_name: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            monitor=monitor,
            mode=mode,
            save_top_k=save_top_k,
            save_last=save_last,
            filename=filename,
            # a metric name with "/" inserted in a file name would make a sub-folder
            auto_insert_metric_name=auto_insert_metric_name,
            **kwargs,
        )
        if num_images < 1 or num_samples < 0 or nrow < 1:
            raise ConfigError(
                "need num_images >= 1, num_samples >= 0 and nrow >= 1, "
                f"got {num_images}, {num_samples} and {nrow}"
            )
        self.num_images = num_images
        self.num_samples = num_samples
        self.nrow = nrow
        self.sample_seed = sample_seed
        self._fixed_images: Tensor | None = None
        self._fixed_labels: Tensor | None = None  # their labels, when the dataset has them
        self._last_grid: tuple[int, str] | None = None  # (global step, path) of the grid written last
        self._fitting = True

    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._fitting = stage == "fit"

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # validate, test and predict save no checkpoints: the top-k list of the run that made the
        # checkpoint is not theirs to keep (Lightning would warn that their folder differs from its)
        if self._fitting:
            super().load_state_dict(state_dict)

    def on_exception(
        self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", exception: BaseException
    ) -> None:
        """On SIGTERM (preemption, `scancel`, `kill`) saves `last.ckpt` (mid-epoch) and its grid, so that
        `fit --ckpt_path last` continues the run. Lightning raises SIGTERMException on every rank at the same
        step, so the collective save is safe; other exceptions (a crashed rank) save nothing, as a
        collective save could then wait forever for the missing rank."""
        if isinstance(exception, SIGTERMException) and self.save_last and not trainer.sanity_checking:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            rank_zero_info(f"Stopped by SIGTERM: saved {self.last_model_path}; resume with --ckpt_path last")

    def _save_last_checkpoint(self, trainer: "pl.Trainer", monitor_candidates: dict[str, Tensor]) -> None:
        # `last.ckpt` is the newest state of this run folder, whatever it was resumed from: a run resumed from
        # a SLURM HPC checkpoint (whose saved callback state predates last.ckpt) overwrites it rather than
        # writing `last-v1.ckpt` beside it, which `--ckpt_path last` would not pick
        if not self.last_model_path:
            self.last_model_path = self.format_checkpoint_name(monitor_candidates, self.CHECKPOINT_NAME_LAST)
        super()._save_last_checkpoint(trainer, monitor_candidates)

    def _save_checkpoint(self, trainer: "pl.Trainer", filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        if trainer.is_global_zero:
            self._write_grid(trainer, trainer.lightning_module, grid_path(filepath))

    def _remove_checkpoint(self, trainer: "pl.Trainer", filepath: str) -> None:
        super()._remove_checkpoint(trainer, filepath)
        if trainer.is_global_zero and self._fs.exists(grid_path(filepath)):
            self._fs.rm(grid_path(filepath))

    @staticmethod
    def _link_checkpoint(trainer: "pl.Trainer", filepath: str, linkpath: str) -> None:
        # save_last="link": `last.png` links to the grid of the checkpoint `last.ckpt` links to
        ModelCheckpoint._link_checkpoint(trainer, filepath, linkpath)
        ModelCheckpoint._link_checkpoint(trainer, grid_path(filepath), grid_path(linkpath))

    def _write_grid(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", path: str) -> None:
        step = trainer.global_step
        if self._last_grid is not None and self._last_grid[0] == step and self._fs.exists(self._last_grid[1]):
            # same weights as the grid just written (e.g. `last.ckpt` beside a top-k checkpoint): copy it
            with self._fs.open(self._last_grid[1], "rb") as source, atomic_write(path) as file:
                file.write(source.read())
        else:
            grid = self.render(trainer, pl_module)
            # written whole or not at all: a kill mid-write leaves the previous grid, not half a PNG
            with atomic_write(path) as file:
                save_image(grid, file, format="png")
            self._log_grid(trainer, grid)
        self._last_grid = (step, path)

    @torch.no_grad()
    def render(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> Tensor:
        """The grid as a (3, H, W) image in [0, 1]."""
        images = self.fixed_images(trainer)
        value_range = getattr(pl_module, "value_range", (0.0, 1.0))
        was_training = pl_module.training
        pl_module.eval()
        try:
            sources = self._rows_per_image(pl_module, images)
            blank = torch.full_like(images[:1], value_range[0])
            rows = []
            for start in range(0, len(images), self.nrow):
                for source in sources:
                    row = source[start : start + self.nrow]
                    rows.append(torch.cat([row, blank.expand(self.nrow - len(row), *row.shape[1:])]))
            blocks = [torch.cat(rows)]
            samples = self._samples(pl_module) if self.num_samples else None
            if samples is not None:
                blocks.append(samples.float().cpu())
        finally:
            pl_module.train(was_training)
        grids = [
            to_unit_interval(make_grid(block, nrow=self.nrow, pad_value=1.0), value_range) for block in blocks
        ]
        gap = torch.ones(3, _BLOCK_GAP, grids[0].shape[2])
        parts = [grids[0]]
        for grid in grids[1:]:
            parts += [gap, grid]
        return torch.cat(parts, dim=1)

    def _samples(self, pl_module: "pl.LightningModule") -> Tensor | None:
        """Images decoded from fixed prior noise: laid out by the model where it has `samples_for_grid` (the
        conditional VAE: one row per class), else `num_samples` from `sample`; None if it cannot sample."""
        generator = torch.Generator().manual_seed(self.sample_seed)
        if callable(getattr(pl_module, "samples_for_grid", None)):
            return pl_module.samples_for_grid(self.num_samples, self.nrow, generator=generator)
        if callable(getattr(pl_module, "sample", None)):
            return pl_module.sample(self.num_samples, generator=generator)
        return None

    def _rows_per_image(self, pl_module: "pl.LightningModule", images: Tensor) -> list[Tensor]:
        """What the grid shows of each fixed image, one row each: the image and its reconstruction, and for
        denoising models (those with a `corrupt` method) a corrupted copy and its reconstruction too."""
        x = images.to(pl_module.device, next(pl_module.parameters()).dtype)
        # a conditional model takes the labels as well, in the form its `conditions_of` gives them
        batch = x if self._fixed_labels is None else (x, self._fixed_labels.to(pl_module.device))
        conditions_of = getattr(pl_module, "conditions_of", None)
        conditions = conditions_of(batch) if callable(conditions_of) else {}
        rows = [images, pl_module(x, **conditions).float().cpu()]
        if callable(getattr(pl_module, "corrupt", None)):
            generator = torch.Generator(device=x.device).manual_seed(self.sample_seed)
            corrupted = pl_module.corrupt(x, generator)
            rows += [corrupted.float().cpu(), pl_module(corrupted, **conditions).float().cpu()]
        return rows

    def fixed_images(self, trainer: "pl.Trainer") -> Tensor:
        """The first `num_images` images of the validation set (of the training set when there is none),
        read once and kept (with their labels), so every grid shows the same images whatever the sampler or
        world size."""
        if self._fixed_images is None:
            loaders = (
                trainer.val_dataloaders if trainer.val_dataloaders is not None else trainer.train_dataloader
            )
            loader: DataLoader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
            dataset = loader.dataset
            items = [dataset[i] for i in range(min(self.num_images, len(dataset)))]
            # .cpu(): resident data lives on the training device
            self._fixed_images = torch.stack([images_of(item) for item in items]).float().cpu()
            if not isinstance(items[0], Tensor) and len(items[0]) > 1:
                self._fixed_labels = torch.stack([torch.as_tensor(item[1]) for item in items]).cpu()
        return self._fixed_images

    def _log_grid(self, trainer: "pl.Trainer", grid: Tensor) -> None:
        """Hands the grid to every attached logger that takes images."""
        log_image(trainer, "samples/grid", grid)


def log_image(trainer: "pl.Trainer", key: str, image: Tensor) -> None:
    """Hands a (3, H, W) image in [0, 1] to every attached logger that takes images, at the current step."""
    # loggers differ in how they scale float images (W&B does not: [0, 1] comes out black); bytes in
    # 0-255 mean the same to all. Rounded as save_image rounds, so loggers show the PNG's very pixels
    image = image.mul(255).add(0.5).clamp(0, 255).to(torch.uint8)
    step = trainer.global_step
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, image, global_step=step)
        elif callable(getattr(logger, "log_image", None)):
            # W&B's x-axis is the step; a caption per image says which epoch's weights drew it
            caption = {"caption": [f"epoch {trainer.current_epoch}, step {step}"]}
            extra = caption if isinstance(logger, WandbLogger) else {}
            logger.log_image(key=key, images=[image.permute(1, 2, 0).numpy()], step=step, **extra)
