"""A ModelCheckpoint that writes, next to each checkpoint `X.ckpt`, a PNG `X.png` of what the model does."""

from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor
from torchvision.utils import save_image

from ae_lightning.callbacks.grid import SampleGrid
from ae_lightning.callbacks.images import autoencoder_of, log_image
from ae_lightning.files import atomic_write


def grid_path(checkpoint_path: str | Path) -> str:
    """`dir/X.ckpt` -> `dir/X.png`."""
    return str(Path(checkpoint_path).with_suffix(".png"))


class SampleGridCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that writes, next to each checkpoint `X.ckpt`, a PNG grid `X.png` (`SampleGrid`: fixed
    validation images above their reconstructions, and samples of generative models), also handed to the
    attached loggers that take images. Written on global rank zero only; a grid goes when its checkpoint is
    removed. Data that are not images (points of a `ManifoldDataModule`) get checkpoints without grids.
    (`PreemptionCheckpoint`, which the CLI adds, saves `last.ckpt` and its grid on SIGTERM.)

    Lightning has no public hook for "a checkpoint file was written, removed or linked": the three private
    methods it calls for that are overridden here, and only here (tests/test_callbacks.py pins them).

    Args:
        num_images, num_samples, nrow, sample_seed: what the grid shows (`SampleGrid`).
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
        self.grid = SampleGrid(num_images, num_samples, nrow, sample_seed)
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

    def render(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> Tensor:
        """The grid of the module's current weights, (3, H, W) in [0, 1]."""
        return self.grid.render(autoencoder_of(pl_module), self.grid.fixed_images(trainer))

    def write_grid(self, trainer: "pl.Trainer", path: str) -> None:
        """Writes the grid of the current weights to `path` (atomically), once per step: a second checkpoint
        of the same step (`last.ckpt` beside a top-k one) gets a copy."""
        if len(autoencoder_of(trainer.lightning_module).image_shape) != 3:
            return  # vectors: no picture to draw
        step = trainer.global_step
        if self._last_grid is not None and self._last_grid[0] == step and Path(self._last_grid[1]).is_file():
            with atomic_write(path) as file:
                file.write(Path(self._last_grid[1]).read_bytes())
        else:
            grid = self.render(trainer, trainer.lightning_module)
            # written whole or not at all: a kill mid-write leaves the previous grid, not half a PNG
            with atomic_write(path) as file:
                save_image(grid, file, format="png")
            log_image(trainer, "samples/grid", grid)
        self._last_grid = (step, path)

    # --- Lightning's private checkpoint-file methods: the only overrides of them in the project ---

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
            self.write_grid(trainer, grid_path(filepath))

    def _remove_checkpoint(self, trainer: "pl.Trainer", filepath: str) -> None:
        super()._remove_checkpoint(trainer, filepath)
        if trainer.is_global_zero:
            Path(grid_path(filepath)).unlink(missing_ok=True)

    @staticmethod
    def _link_checkpoint(trainer: "pl.Trainer", filepath: str, linkpath: str) -> None:
        # save_last="link": `last.png` links to the grid of the checkpoint `last.ckpt` links to
        ModelCheckpoint._link_checkpoint(trainer, filepath, linkpath)
        ModelCheckpoint._link_checkpoint(trainer, grid_path(filepath), grid_path(linkpath))
