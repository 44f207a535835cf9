"""`test` on manifold data: how well the code recovers the true coordinate, how close reconstructions lie
to the manifold, and pictures of the projection."""

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_debug, rank_zero_info
from PIL import Image, ImageDraw
from torch import Tensor
from torchvision.utils import save_image

from ae_lightning.autoencoders import Autoencoder, Reconstructs
from ae_lightning.batch import Batch
from ae_lightning.callbacks.gather import Collected
from ae_lightning.callbacks.images import autoencoder_of, log_image
from ae_lightning.callbacks.test_pictures import to_tensor
from ae_lightning.data.contract import KnownManifold
from ae_lightning.data.manifold import Manifold
from ae_lightning.evaluation.projection import projection_quality
from ae_lightning.files import atomic_write
from ae_lightning.runs import run_folder

#: anchors of the colour scale of the true coordinate (matplotlib's viridis, low to high)
_SCALE = torch.tensor([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]]) / 255
#: the three planes of the manifold's R^3 drawn side by side
_PLANES = ((0, 1, "x-y"), (0, 2, "x-z"), (1, 2, "y-z"))


def colours(values: Tensor) -> list[tuple[int, int, int]]:
    """An RGB colour per value (N,), from dark blue (lowest) to yellow (highest)."""
    position = (values - values.min()) / (values.max() - values.min()).clamp(min=1e-12) * (len(_SCALE) - 1)
    low = position.floor().long().clamp(max=len(_SCALE) - 2)
    weight = (position - low)[:, None]
    rgb = (_SCALE[low] * (1 - weight) + _SCALE[low + 1] * weight) * 255
    return [tuple(int(c) for c in row) for row in rgb.round().tolist()]


def scatter_panels(
    panels: list[tuple[Tensor, list[tuple[int, int, int]], Tensor | None, str]], size: int = 300
) -> Tensor:
    """Panels side by side, each (points (N, 2), their colours, an optional black line (M, 2), a title):
    a (3, size, len(panels) * size) image in [0, 1]."""
    canvas = Image.new("RGB", (size * len(panels), size), "white")
    draw = ImageDraw.Draw(canvas)
    margin = 24
    for i, (points, point_colours, line, title) in enumerate(panels):
        every = points if line is None else torch.cat([points, line])
        low, high = every.min(0).values, every.max(0).values
        span = (high - low).clamp(min=1e-8)

        def place(p: Tensor) -> list[tuple[float, float]]:
            scaled = (p - low) / span * (size - 2 * margin) + margin  # noqa: B023
            return [(i * size + x, size - y) for x, y in scaled.tolist()]  # noqa: B023

        for (x, y), colour in zip(place(points), point_colours, strict=True):
            draw.ellipse((x - 1.5, y - 1.5, x + 1.5, y + 1.5), fill=colour)
        if line is not None and len(line) > 1:
            draw.line(place(line), fill="black", width=2)
        draw.text((i * size + 6, 4), title, fill="black")
    return to_tensor(canvas)


class ManifoldReport(Callback):
    """At the end of `test` on data on a known manifold (a `KnownManifold` datamodule, `ManifoldDataModule`):
    logs how the code relates to the true coordinates and how close reconstructions lie to the manifold, and
    draws both.

    Logged (over the whole test set, all devices): `test/abs_spearman` (a 1-d code against the 1-d
    coordinate: |Spearman|, the code may run either way), `test/linear_r2` (R^2 of an affine fit of the
    coordinates from the code, averaged over them: for 2-d codes), `test/input_distance` and
    `test/reconstruction_distance` (mean distance to the manifold of the test points and of their
    reconstructions, in data units), `test/distance_ratio` (the first over the second: how much closer to the
    manifold a reconstruction lies than its input), `test/recon_mse` (per coordinate) beside `test/noise_var`
    (the variance of the noise per coordinate). Pictures in the run folder and to the loggers:
    `manifold.png` (the test points in three planes of the manifold's R^3, coloured by the true coordinate,
    with the decoded sweep of the code: a black curve for a 1-d code, a grid of grey dots for 2-d) and
    `code_vs_coordinate.png` (each code unit against the true coordinate).

    Args:
        sweep: codes decoded for the black curve (a 2-d code: a sweep x sweep grid, at most 40 x 40).
    """

    def __init__(self, sweep: int = 300) -> None:
        self.sweep = sweep
        self._collected = Collected()

    def on_test_epoch_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._collected = Collected()

    @torch.no_grad()
    def on_test_batch_end(
        self,
        trainer: "pl.Trainer",
        pl_module: "pl.LightningModule",
        outputs: Any,
        batch: Batch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        model = autoencoder_of(pl_module)
        if batch.coordinates is None or not isinstance(model, Reconstructs):
            return
        parts = {
            "inputs": batch.inputs,
            "codes": model.latent(batch),
            "reconstructions": model.reconstruct(batch),
            "coordinates": batch.coordinates,
        }
        self._collected.add(parts)

    def on_test_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        datamodule = trainer.datamodule
        data = self._collected.gather(trainer)
        folder = Path(run_folder(trainer))  # collective: every rank calls it
        if not isinstance(datamodule, KnownManifold) or not data:
            # the base config lists it for every run: elsewhere it does nothing
            rank_zero_debug("ManifoldReport: no test data on a known manifold, or no decoder; nothing to do")
            return
        manifold = datamodule.manifold
        metrics = projection_quality(data["codes"], data["coordinates"])
        input_distance = manifold.distance(data["inputs"]).mean().item()
        reconstruction_distance = manifold.distance(data["reconstructions"]).mean().item()
        metrics |= {
            "input_distance": input_distance,
            "reconstruction_distance": reconstruction_distance,
            "distance_ratio": input_distance / max(reconstruction_distance, 1e-12),
            "recon_mse": (data["reconstructions"] - data["inputs"]).square().mean().item(),
            "noise_var": datamodule.noise_std**2,
        }
        for name, value in metrics.items():  # every rank computed them from the same gathered set
            pl_module.log(f"test/{name}", value, sync_dist=True)
        rank_zero_info("Projection: " + ", ".join(f"{name} {value:.4g}" for name, value in metrics.items()))
        if not trainer.is_global_zero:
            return
        folder.mkdir(parents=True, exist_ok=True)
        model = autoencoder_of(pl_module)
        pictures = {
            "manifold": self.manifold_picture(model, manifold, data),
            "code_vs_coordinate": self.code_picture(data),
        }
        for name, picture in pictures.items():
            with atomic_write(folder / f"{name}.png") as file:
                save_image(picture, file, format="png")
            log_image(trainer, f"test/{name}", picture)
        rank_zero_info(
            f"Manifold pictures written: {folder / 'manifold.png'}, {folder / 'code_vs_coordinate.png'}"
        )

    @torch.no_grad()
    def decoded_sweep(self, model: Autoencoder, codes: Tensor) -> Tensor:
        """Codes spanning those of the test set, decoded: (M, D) in data units."""
        low, high = codes.min(0).values, codes.max(0).values
        if codes.shape[1] == 1:
            sweep = torch.linspace(0, 1, self.sweep)[:, None] * (high - low) + low
        else:
            side = min(self.sweep, 40)
            grid = torch.cartesian_prod(*[torch.linspace(0, 1, side)] * 2)
            sweep = torch.cat(
                [grid * (high[:2] - low[:2]) + low[:2], codes.mean(0)[2:].expand(len(grid), -1)], 1
            )
        was_training = model.training
        model.eval()
        decoded = model.decode(sweep.to(model.device, model.dtype)).float().cpu()
        model.train(was_training)
        return decoded

    def manifold_picture(self, model: Autoencoder, manifold: Manifold, data: dict[str, Tensor]) -> Tensor:
        """The test points in three planes, coloured by the first true coordinate, and the decoded sweep."""
        xyz = manifold.to_xyz(data["inputs"]).float()
        curve = manifold.to_xyz(self.decoded_sweep(model, data["codes"])).float()
        point_colours = colours(data["coordinates"][:, 0])
        one_dimensional = data["codes"].shape[1] == 1
        panels = []
        for first, second, title in _PLANES:
            line = curve[:, [first, second]]
            if one_dimensional:
                panels.append((xyz[:, [first, second]], point_colours, line, title))
            else:  # a surface: the decoded grid as grey dots, behind the points
                points = torch.cat([line, xyz[:, [first, second]]])
                panels.append((points, [(170, 170, 170)] * len(line) + point_colours, None, title))
        return scatter_panels(panels)

    def code_picture(self, data: dict[str, Tensor]) -> Tensor:
        """Each code unit (up to 2) against the true coordinate of the same index (or the first)."""
        codes, coordinates = data["codes"], data["coordinates"]
        panels = []
        for unit in range(min(2, codes.shape[1])):
            coordinate = coordinates[:, min(unit, coordinates.shape[1] - 1)]
            points = torch.stack([coordinate, codes[:, unit]], 1)
            title = f"code {unit} against coordinate {min(unit, coordinates.shape[1] - 1)}"
            panels.append((points, colours(coordinate), None, title))
        return scatter_panels(panels)
