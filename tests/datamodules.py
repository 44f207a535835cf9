"""A datamodule written as docs/architecture.md's "Adding a datamodule" says, given to the real CLI as
`--data tests.datamodules.NoisyLine` (the tests' folder is importable)."""

import torch

from ae_lightning.data import AutoencoderDataModule, PointDataset


class NoisyLine(AutoencoderDataModule):
    """Points near a line through R^4: one number each, the position along the line.

    Args:
        num_points: points in all; a fifth validate and a fifth test.
        batch_size: points per batch on each device.
        split_seed: seed of the points and of the training order.
        steps_per_call: batches per training item (set by the CLI from the model).
    """

    def __init__(
        self, num_points: int = 500, batch_size: int = 50, split_seed: int = 42, steps_per_call: int = 1
    ) -> None:
        super().__init__(batch_size, num_workers=0, split_seed=split_seed, resident=True,
                         steps_per_call=steps_per_call)  # fmt: skip
        self.save_hyperparameters()
        self.image_shape, self.value_range = (4,), (-1.0, 1.0)

    def load_splits(self) -> dict[str, PointDataset]:
        generator = torch.Generator().manual_seed(self.hparams.split_seed)
        position = torch.rand(self.hparams.num_points, 1, generator=generator) * 1.6 - 0.8
        direction = torch.tensor([[0.5, 0.5, -0.5, 0.5]])
        points = position * direction + 0.01 * torch.randn(self.hparams.num_points, 4, generator=generator)
        fifth = self.hparams.num_points // 5
        parts = {"val": slice(0, fifth), "test": slice(fifth, 2 * fifth), "train": slice(2 * fifth, None)}
        return {split: PointDataset(points[rows], position[rows]) for split, rows in parts.items()}
