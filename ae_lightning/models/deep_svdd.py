"""The LightningModule of Deep SVDD: builds the torch model and sets its centre from the training data when
the SVDD objective starts."""

from collections.abc import Iterator
from typing import Any

from torch import Tensor

from ae_lightning import autoencoders
from ae_lightning.autoencoders.deep_svdd import initial_centre
from ae_lightning.batch import Batch
from ae_lightning.errors import ConfigError
from ae_lightning.models.module import AutoencoderModule


class DeepSVDD(AutoencoderModule):
    """Deep SVDD (`autoencoders.DeepSVDD`), one-class or soft-boundary: no decoder, so no reconstruction
    metrics or rows; validation and test log `squared_distance` (soft-boundary: `outside` too), on one-class
    data the AUROC, AUPR and F1 of its scores; soft-boundary logs `train/radius`.

    The centre c is the mean code of the training data, one pass over the datamodule's training loader
    (each process its share, summed over processes so that all get the same c): before fitting starts (its
    sanity validation already scores) when `pretrain_steps` is 0, else at the first step after pretraining.
    c and R are buffers: a checkpoint holds them and a resumed run keeps them. While pretraining, validation
    logs the reconstruction loss only (no scores before c).
    """

    def build_autoencoder(self, **model_args: Any) -> autoencoders.DeepSVDD:
        model = autoencoders.DeepSVDD(**model_args)
        if model.pretrain_steps % self.steps_per_call:
            # the centre is set between calls: a call of K steps must not straddle the end of pretraining
            raise ConfigError(
                f"pretrain_steps ({model.pretrain_steps}) must be a multiple of steps_per_call "
                f"({self.steps_per_call})"
            )
        return model

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self._set_centre_when_due()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._set_centre_when_due()

    def validation_step(self, batch: Batch, batch_idx: int) -> Tensor:
        if self.model.has_centre:
            return super().validation_step(batch, batch_idx)
        return self._step(batch, "val")  # pretraining: its loss; no anomaly scores before the centre

    def _set_centre_when_due(self) -> None:
        """Sets c from the training data once pretraining is done, unless it is set (or was resumed)."""
        model = self.model
        if model.has_centre or self.global_step < model.pretrain_steps:
            return
        datamodule = self.trainer.datamodule
        if datamodule is None:
            raise ConfigError(
                "DeepSVDD sets its centre from the datamodule's training data: fit with a datamodule "
                "(cli.py does), or set it before fitting with model.model.set_centre(initial_centre(...))"
            )
        strategy = self.trainer.strategy
        centre = initial_centre(
            model,
            _batches(datamodule.train_dataloader()),
            lambda tensor: strategy.reduce(tensor, reduce_op="sum"),
        )
        model.set_centre(centre)


def _batches(loader: Any) -> Iterator[Batch]:
    """The batches of a training loader, whose items are batches or, with K steps per call, lists of them."""
    for item in loader:
        yield from item if isinstance(item, list) else [item]
