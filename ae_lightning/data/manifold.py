"""Points on a curve or surface in R^D, with their true coordinates: the autoencoder as a projection."""

import math
from typing import Literal

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ae_lightning.batch import Batch
from ae_lightning.data.contract import AutoencoderDataModule, KnownManifold, Split
from ae_lightning.errors import ConfigError

ManifoldName = Literal["helix", "swiss_roll"]

#: each axis of the manifold's R^3 is scaled to [-SCALED, SCALED] (tanh decoders reach it)
SCALED = 0.9


class Manifold:
    """A curve or surface in R^3, its map into R^D, and the scaling that puts it in [-1, 1]^D.

    helix: (r cos t, r sin t, t / (4 pi)) for t in [0, 2 pi turns]; one coordinate, t.
    swiss_roll: (u cos u, v, u sin u) for u in [1.5 pi, 4.5 pi], v in [0, height]; two coordinates (u, v).
    Data units: each axis of R^3 is scaled to [-0.9, 0.9] (the helix's rise counts as much as its radius);
    with `embed_dim` D > 3 the scaled points are then mapped by a fixed random matrix with orthonormal
    columns (seeded) and divided by sqrt(3), so distances are kept (up to that factor) and the structure is
    hidden in R^D.
    """

    def __init__(
        self,
        name: ManifoldName,
        turns: float,
        radius: float,
        height: float,
        embed_dim: int | None,
        seed: int,
    ) -> None:
        self.name, self.turns, self.radius, self.height = name, turns, radius, height
        self.dim = 3 if embed_dim is None else embed_dim
        self.embedding: Tensor | None = None  # (D, 3)
        if embed_dim is not None:
            gaussian = torch.randn(embed_dim, 3, generator=torch.Generator().manual_seed(seed + 1))
            self.embedding = torch.linalg.qr(gaussian).Q
        # the extent of each axis, from a dense sample of the clean manifold
        self.center, self.half_range = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
        xyz = self._xyz(self.dense_coordinates())
        low, high = xyz.min(0).values, xyz.max(0).values
        self.center, self.half_range = (low + high) / 2, ((high - low) / 2).clamp(min=1e-12)
        self.shrink = 1.0 if self.embedding is None else 1 / math.sqrt(3)

    @property
    def coordinate_dim(self) -> int:
        """How many numbers say where a point lies on the manifold (1 for the helix, 2 for the roll)."""
        return 1 if self.name == "helix" else 2

    def sample_coordinates(self, count: int, generator: torch.Generator) -> Tensor:
        """`count` uniform draws of the true coordinates, (count, k), in float64."""
        uniform = torch.rand(count, self.coordinate_dim, generator=generator, dtype=torch.float64)
        if self.name == "helix":
            return uniform * 2 * math.pi * self.turns
        return torch.stack([1.5 * math.pi + 3 * math.pi * uniform[:, 0], self.height * uniform[:, 1]], 1)

    def _xyz(self, coordinates: Tensor) -> Tensor:
        """The points of R^3 (N, 3) at true coordinates (N, k), unscaled."""
        if self.name == "helix":
            t = coordinates[:, 0]
            return torch.stack([self.radius * t.cos(), self.radius * t.sin(), t / (4 * math.pi)], 1)
        u, v = coordinates[:, 0], coordinates[:, 1]
        return torch.stack([u * u.cos(), v, u * u.sin()], 1)

    def points(self, coordinates: Tensor) -> Tensor:
        """Clean points (N, D) in data units (scaled and embedded) at true coordinates (N, k)."""
        return self.to_data(self._xyz(coordinates.double()))

    def to_data(self, xyz: Tensor) -> Tensor:
        """Points of R^3 (N, 3) -> data units (N, D)."""
        scaled = (xyz.double() - self.center) / self.half_range * SCALED
        return scaled if self.embedding is None else scaled @ self.embedding.double().T * self.shrink

    def to_xyz(self, points: Tensor) -> Tensor:
        """Data units (N, D) -> the manifold's own R^3 (N, 3), for pictures (off-manifold parts dropped)."""
        points = points.double()
        scaled = points if self.embedding is None else points @ self.embedding.double() / self.shrink
        return scaled / SCALED * self.half_range + self.center

    def dense_coordinates(self) -> Tensor:
        """A dense sample of the coordinates (the helix: 20000 values of t; the roll: a 300 x 100 grid)."""
        if self.name == "helix":
            return torch.linspace(0, 2 * math.pi * self.turns, 20000, dtype=torch.float64)[:, None]
        u = torch.linspace(1.5 * math.pi, 4.5 * math.pi, 300, dtype=torch.float64)
        v = torch.linspace(0, self.height, 100, dtype=torch.float64)
        return torch.cartesian_prod(u, v)

    def distance(self, points: Tensor, chunk_size: int = 512) -> Tensor:
        """Distance (N,) in data units of each point (N, D) to the manifold: to the nearest point of a dense
        sample of it (`dense_coordinates`)."""
        reference = self.points(self.dense_coordinates())
        points = points.double()
        return torch.cat([torch.cdist(chunk, reference).min(1).values for chunk in points.split(chunk_size)])


class PointDataset(Dataset[Batch]):
    """Points (N, D), with their true coordinates (N, k) where they are known: a split of vector data. Indexed
    by a tensor of B indices it gives a whole `Batch` (`images` holds the points), by an int one unbatched
    item, by a list of tensors a list."""

    #: points have no class labels
    labels = None

    def __init__(self, points: Tensor, coordinates: Tensor | None = None) -> None:
        self.points, self.coordinates = points, coordinates

    def __len__(self) -> int:
        return self.points.shape[0]

    @property
    def nbytes(self) -> int:
        return self.points.nbytes + (0 if self.coordinates is None else self.coordinates.nbytes)

    @property
    def device(self) -> torch.device:
        return self.points.device

    def to(self, device: torch.device | str) -> "PointDataset":
        """Keeps points and coordinates on `device` (in place); returns self."""
        self.points = self.points.to(device)
        if self.coordinates is not None:
            self.coordinates = self.coordinates.to(device)
        return self

    def read_in_batches(self) -> "PointDataset":
        return self

    def __getitem__(self, index: int | Tensor | list[Tensor]) -> Batch | list[Batch]:
        if isinstance(index, list):
            return [self[rows] for rows in index]
        index = torch.as_tensor(index, device=self.points.device)
        coordinates = None if self.coordinates is None else self.coordinates[index]
        return Batch(self.points[index], index=index, coordinates=coordinates)

    def __getitems__(self, indices: list[int]) -> Batch:
        """A whole batch per read (predict's DataLoader)."""
        return self[torch.tensor(indices, dtype=torch.long)]


class ManifoldDataModule(AutoencoderDataModule, KnownManifold):
    """Points sampled on a helix or a swiss roll, optionally noisy and hidden in R^D, with the true
    coordinate of each point kept in the batch (`Batch.coordinates`).

    The points are drawn once, with `data_seed`, and split into train, validation and test with
    `split_seed`; the training order depends on the seed and the epoch only, and under DDP each rank takes
    its share (as the MNIST datamodule). Data units: each axis of the clean manifold is scaled to
    [-0.9, 0.9] (`value_range` is [-1, 1]: the decoders end in tanh; `Manifold` says how), and `noise_std`
    is in these units.

    Args:
        manifold: `helix` (a curve: one coordinate, the angle t) or `swiss_roll` (a surface: (u, v)).
        num_points: points drawn in all, the validation and test points included.
        val_size: points held out for validation.
        test_size: points held out for test and predict.
        turns: turns of the helix (t runs over [0, 2 pi turns]).
        radius: radius of the helix.
        height: width of the swiss roll along its axis (v runs over [0, height]).
        noise_std: standard deviation, in data units, of isotropic Gaussian noise added to every point (in
            every one of the D directions, so mostly off the manifold); 0: points on the manifold.
        embed_dim: None keeps the points in R^3; D > 3 maps them into R^D by a fixed random matrix with
            orthonormal columns (distances are kept).
        data_seed: seed of the points, the noise and the embedding.
        split_seed: seed of the train/val/test split and of the training order.
        batch_size: points per batch on each device.
        steps_per_call: batches per training item (set by the CLI from the model's `steps_per_call`).
    """

    def __init__(
        self,
        manifold: ManifoldName = "helix",
        num_points: int = 10000,
        val_size: int = 1000,
        test_size: int = 1000,
        turns: float = 2.0,
        radius: float = 3.0,
        height: float = 21.0,
        noise_std: float = 0.0,
        embed_dim: int | None = None,
        data_seed: int = 0,
        split_seed: int = 42,
        batch_size: int = 128,
        steps_per_call: int = 1,
    ) -> None:
        if manifold not in ("helix", "swiss_roll"):
            raise ConfigError(f"manifold must be 'helix' or 'swiss_roll', got {manifold!r}")
        if num_points < 1:
            raise ConfigError(f"num_points must be at least 1, got {num_points}")
        if val_size < 1 or test_size < 1 or val_size + test_size >= num_points:
            raise ConfigError(
                f"val_size ({val_size}) and test_size ({test_size}) must be at least 1 and leave training "
                f"points among the {num_points}: raise --data.num_points or lower them"
            )
        if noise_std < 0:
            raise ConfigError(f"noise_std must be >= 0 (a standard deviation), got {noise_std}")
        if turns <= 0 or radius <= 0 or height <= 0:
            raise ConfigError(f"turns, radius and height must be positive, got {turns}, {radius}, {height}")
        if embed_dim is not None and embed_dim <= 3:
            raise ConfigError(f"embed_dim must be above 3 (null keeps R^3), got {embed_dim}")
        super().__init__(batch_size, 0, split_seed, resident=True, steps_per_call=steps_per_call)
        self.save_hyperparameters()
        self.manifold = Manifold(manifold, turns, radius, height, embed_dim, data_seed)
        #: read by the CLI, which hands both to the model
        self.image_shape: tuple[int] = (self.manifold.dim,)
        self.value_range: tuple[float, float] = (-1.0, 1.0)

    @property
    def noise_std(self) -> float:
        return self.hparams.noise_std

    def describe(self) -> str:
        return f"{self.hparams.manifold} points"

    def load_splits(self) -> dict[Split, PointDataset]:
        """Draws the points (the same on every rank) and splits them."""
        hp = self.hparams
        generator = torch.Generator().manual_seed(hp.data_seed)
        coordinates = self.manifold.sample_coordinates(hp.num_points, generator)
        points = self.manifold.points(coordinates)
        if hp.noise_std > 0:
            noise = torch.randn(points.shape, generator=generator, dtype=torch.float64)
            points = points + hp.noise_std * noise
        order = torch.randperm(hp.num_points, generator=torch.Generator().manual_seed(hp.split_seed))
        parts = {
            "val": order[: hp.val_size],
            "test": order[hp.val_size : hp.val_size + hp.test_size],
            "train": order[hp.val_size + hp.test_size :],
        }
        return {
            split: PointDataset(points[rows].float(), coordinates[rows].float())
            for split, rows in parts.items()
        }
