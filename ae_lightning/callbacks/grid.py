"""The sample grid: fixed validation images above their reconstructions, and images drawn from the prior."""

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader
from torchvision.utils import make_grid

from ae_lightning.autoencoders import Denoising, Generative, LatentModel, Reconstructs
from ae_lightning.batch import Batch
from ae_lightning.errors import ConfigError
from ae_lightning.value_range import to_unit_interval

#: gap, in pixels, between the reconstruction block and the sample block of a grid
BLOCK_GAP = 6


def stack_blocks(grids: list[Tensor]) -> Tensor:
    """(3, H_i, W) images one above the other, a white gap of BLOCK_GAP pixels between them."""
    gap = torch.ones(3, BLOCK_GAP, grids[0].shape[2])
    parts = [grids[0]]
    for grid in grids[1:]:
        parts += [gap, grid]
    return torch.cat(parts, dim=1)


class SampleGrid:
    """Draws what a model does as one picture, the same images every time so pictures compare across epochs.

    Rows of fixed validation images, each above its reconstruction; a denoising model (`Denoising`) adds a
    row of the images corrupted with a fixed seed and a row of their reconstructions; a generative model
    (`Generative`) adds a block of images decoded from fixed prior noise, laid out by the model
    (`grid_samples`: the conditional VAE draws one row per class).

    Args:
        num_images: how many validation images (the first of the validation set) to show.
        num_samples: how many prior samples to show (generative models only).
        nrow: images per row.
        sample_seed: seed of the fixed prior noise and corruption.
    """

    def __init__(
        self, num_images: int = 16, num_samples: int = 32, nrow: int = 8, sample_seed: int = 0
    ) -> None:
        if num_images < 1 or num_samples < 0 or nrow < 1:
            raise ConfigError(
                "need num_images >= 1, num_samples >= 0 and nrow >= 1, "
                f"got {num_images}, {num_samples} and {nrow}"
            )
        self.num_images = num_images
        self.num_samples = num_samples
        self.nrow = nrow
        self.sample_seed = sample_seed
        self._fixed: Batch | None = None

    @torch.no_grad()
    def render(self, model: LatentModel, fixed: Batch) -> Tensor:
        """The grid as a (3, H, W) image in [0, 1]."""
        was_training = model.training
        model.eval()
        try:
            sources = self._rows_per_image(model, fixed)
            blank = torch.full_like(fixed.inputs[:1], model.value_range[0])
            rows = []
            for start in range(0, len(fixed), self.nrow):
                for source in sources:
                    row = source[start : start + self.nrow]
                    rows.append(torch.cat([row, blank.expand(self.nrow - len(row), *row.shape[1:])]))
            blocks = [torch.cat(rows)]
            if self.num_samples and isinstance(model, Generative):
                generator = torch.Generator().manual_seed(self.sample_seed)
                blocks.append(model.grid_samples(self.num_samples, self.nrow, generator).float().cpu())
        finally:
            model.train(was_training)
        grids = [make_grid(block, nrow=self.nrow, pad_value=1.0) for block in blocks]
        return stack_blocks([to_unit_interval(grid, model.value_range) for grid in grids])

    def _rows_per_image(self, model: LatentModel, fixed: Batch) -> list[Tensor]:
        """What the grid shows of each fixed image, one row each (the images alone for a model without a
        decoder)."""
        batch = fixed.to(model.device, model.dtype)
        if not isinstance(model, Reconstructs):
            return [fixed.inputs]
        rows = [fixed.inputs, model.reconstruct(batch).float().cpu()]
        if isinstance(model, Denoising):
            generator = torch.Generator(device=model.device).manual_seed(self.sample_seed)
            corrupted = batch.with_inputs(model.corrupt(batch.inputs, generator))
            rows += [corrupted.inputs.float().cpu(), model.reconstruct(corrupted).float().cpu()]
        return rows

    def fixed_images(self, trainer: "pl.Trainer") -> Batch:
        """The first `num_images` items of the validation set (of the training set when there is none),
        read once and kept, so every grid shows the same images whatever the sampler or world size."""
        if self._fixed is None:
            loaders = (
                trainer.val_dataloaders if trainer.val_dataloaders is not None else trainer.train_dataloader
            )
            loader: DataLoader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
            dataset = loader.dataset
            items = Batch.collate([dataset[i] for i in range(min(self.num_images, len(dataset)))])
            self._fixed = items.to("cpu", torch.float32)  # resident data lives on the training device
        return self._fixed
