"""The attribute-restoration autoencoder (ITAE: Huang et al., 2019; ARNet: Ye et al., 2020)."""

import itertools
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ae_lightning.autoencoders.base import Autoencoder
from ae_lightning.autoencoders.interface import Denoising
from ae_lightning.batch import Batch
from ae_lightning.errors import ConfigError

#: each erasure and how many fixed ways it has: `rotate` turns by 0, 90, 180 or 270 degrees (orientation
#: erased), `flip` mirrors left-right or not, `gray` replaces the colour by its channel mean (one way),
#: `mask` sets one of the four quadrants to the bottom of the value range
ERASURES: dict[str, int] = {"rotate": 4, "flip": 2, "gray": 1, "mask": 4}


class RestorationAE(Autoencoder, Denoising):
    """Autoencoder that restores images whose attributes were erased: each training input is turned, mirrored,
    grayed or masked (the `erasures`, each picked at random per image among its fixed ways) and the model
    reconstructs the original. Restoring an attribute needs to know what normal images look like: how a
    digit 3 stands upright, what colour a good part has. On images unlike the training class the restoration
    fails, which makes its error a sharper anomaly score than a plain reconstruction error.

    The anomaly score, and the evaluation loss, is the restoration error averaged over every combination of
    the erasures' ways (`views()`: 4 for `rotate`, 8 for `rotate` and `flip`), so the same image always gets
    the same score.

    Args:
        erasures: the attributes erased, from `rotate`, `flip`, `gray` (colour images only) and `mask`;
            `rotate` needs square images.
        **kwargs: the arguments of `Autoencoder`.
    """

    def __init__(self, erasures: Sequence[str] = ("rotate",), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        erasures = tuple(erasures)
        unknown = [name for name in erasures if name not in ERASURES]
        if unknown or not erasures or len(set(erasures)) != len(erasures):
            raise ConfigError(
                f"erasures must be distinct names from {list(ERASURES)}, at least one, got {list(erasures)}"
            )
        if len(self.image_shape) != 3:
            raise ConfigError("RestorationAE erases attributes of images (C, H, W): vector data have none")
        channels, height, width = self.image_shape
        if "rotate" in erasures and height != width:
            raise ConfigError(
                f"erasure 'rotate' turns images by 90 degrees, which needs square images, got "
                f"{height}x{width}: resize them (--data.image_size) or choose other erasures"
            )
        if "gray" in erasures and channels != 3:
            raise ConfigError(f"erasure 'gray' takes colour images (3 channels), the data have {channels}")
        self.erasures = erasures

    def views(self) -> list[tuple[int, ...]]:
        """Every combination of the erasures' ways, one index per erasure: the set the score averages."""
        return list(itertools.product(*(range(ERASURES[name]) for name in self.erasures)))

    def erase(self, x: Tensor, ways: Tensor) -> Tensor:
        """`x` (B, C, H, W) with each image's attributes erased: `ways` (B, len(erasures)) int64, the way of
        each erasure for each image. `x` itself is left untouched."""
        low = self.value_range[0]
        for position, name in enumerate(self.erasures):
            way = ways[:, position].view(-1, 1, 1, 1)
            if name == "rotate":
                turned = torch.stack([torch.rot90(x, k, dims=(2, 3)) for k in range(4)])  # (4, B, C, H, W)
                x = turned[way.flatten(), torch.arange(x.shape[0], device=x.device)]
            elif name == "flip":
                x = torch.where(way == 1, x.flip(3), x)
            elif name == "gray":
                x = x.mean(1, keepdim=True).expand_as(x)
            else:
                x = torch.where(quadrant_masks(x.shape[2], x.shape[3], x.device)[way.flatten()], low, x)
        return x

    def corrupt(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """`x` with each image's attributes erased in ways drawn at random (uniformly per erasure)."""
        ways = [
            torch.randint(0, ERASURES[name], (x.shape[0],), generator=generator, device=x.device)
            for name in self.erasures
        ]
        return self.erase(x, torch.stack(ways, 1))

    def erased_views(self, x: Tensor) -> list[Tensor]:
        """`x` erased in each fixed view's ways (`views`), one (B, C, H, W) tensor per view."""
        erased = []
        for view in self.views():
            # filled on the device: a tensor of the view's numbers would be copied from the host at each call
            ways = torch.stack([torch.full((x.shape[0],), way, device=x.device) for way in view], 1)
            erased.append(self.erase(x, ways))
        return erased

    def restoration_error(self, x: Tensor, scored: bool = False) -> Tensor:
        """The reconstruction loss of `x` from each fixed view, averaged over the views, (B,); `scored`: each
        view's anomaly score instead (`reconstruction_score`: shaped as the score options say)."""
        measure = self.reconstruction_score if scored else self.reconstruction_error
        return torch.stack([measure(erased, x) for erased in self.erased_views(x)]).mean(0)

    def loss_terms(self, batch: Batch) -> dict[str, Tensor]:
        x = batch.inputs
        restored = (
            self.reconstruction_error(self.corrupt(x), x) if self.training else self.restoration_error(x)
        )
        return {"loss": restored, "recon": restored}

    def anomaly_score(self, batch: Batch) -> Tensor:
        """The restoration score averaged over every view (higher: more anomalous), (B,)."""
        return self.restoration_error(batch.inputs, scored=True)

    def anomaly_map(self, batch: Batch) -> Tensor:
        """The map of each view's restoration, averaged over the views, (B, H, W) float32."""
        x = batch.inputs
        maps = [self.score_shape.map(x, self.decode(self.code(erased))) for erased in self.erased_views(x)]
        return torch.stack(maps).mean(0)


def quadrant_masks(height: int, width: int, device: torch.device) -> Tensor:
    """(4, 1, H, W) bool: the top-left, top-right, bottom-left and bottom-right quarter of an image."""
    rows = torch.arange(height, device=device)[:, None] >= height // 2
    cols = torch.arange(width, device=device)[None, :] >= width // 2
    masks = torch.stack([~rows & ~cols, ~rows & cols, rows & ~cols, rows & cols])
    return masks[:, None]
