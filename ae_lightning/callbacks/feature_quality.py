"""`test` reports how good the codes are as features: linear-probe and k-NN accuracy of the test latents."""

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_debug
from torch import Tensor

from ae_lightning.batch import Batch
from ae_lightning.callbacks.gather import gather_shares, to_host, wait_for_copies
from ae_lightning.callbacks.images import autoencoder_of
from ae_lightning.data.contract import AutoencoderDataModule
from ae_lightning.errors import ConfigError
from ae_lightning.evaluation.features import knn_accuracy, linear_probe_accuracy

#: images encoded at a time when the training split's latents are computed
_ENCODE_BATCH = 1024


class FeatureQuality(Callback):
    """Logs `test/linear_probe_acc` and `test/knn_acc`: classifiers fitted on the latents of the training
    split (the torch model's `latent`, for a VAE the posterior mean), scored on the latents of the test set.

    A callback rather than part of the model's test step because it needs a second split (the training
    images) and a classifier fitted after the whole test set is encoded; it works for every model, since it
    uses only `latent` (which reads the labels a conditional VAE needs from the batch). The training latents
    are encoded on every process (a pass of the encoder only), the test latents gathered from all processes,
    so the numbers are those of the whole sets. Where it does not apply it does nothing (the base config lists
    it for every run): data without labels, or the one-class protocol (the training split holds one class).

    Args:
        knn_k: neighbours of the k-NN vote.
        probe_steps: L-BFGS iterations of the linear probe (a multinomial logistic regression).
        probe_weight_decay: L2 penalty of the probe's weights.
        max_train: fit on at most this many training images (the first ones of the split); None: all.
    """

    def __init__(
        self,
        knn_k: int = 5,
        probe_steps: int = 100,
        probe_weight_decay: float = 1e-4,
        max_train: int | None = None,
    ) -> None:
        if (
            knn_k < 1
            or probe_steps < 1
            or probe_weight_decay < 0
            or (max_train is not None and max_train < 1)
        ):
            raise ConfigError(
                "need knn_k >= 1, probe_steps >= 1, probe_weight_decay >= 0 and max_train >= 1 (or null), "
                f"got {knn_k}, {probe_steps}, {probe_weight_decay} and {max_train}"
            )
        self.knn_k = knn_k
        self.probe_steps = probe_steps
        self.probe_weight_decay = probe_weight_decay
        self.max_train = max_train
        self._latents: list[Tensor] = []
        self._labels: list[Tensor] = []

    def on_test_epoch_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._latents, self._labels = [], []

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
        if batch.labels is None or batch.gt_anomaly is not None:  # nothing to classify
            return
        latent = autoencoder_of(pl_module).latent(batch)
        self._latents.append(to_host(latent.float().flatten(1)))
        self._labels.append(to_host(batch.labels))

    def on_test_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        wait_for_copies(trainer.strategy.root_device)
        local = (torch.cat(self._latents), torch.cat(self._labels)) if self._latents else None
        parts = [part for part in gather_shares(trainer, local) if part is not None]
        self._latents, self._labels = [], []
        if not parts:
            rank_zero_debug("FeatureQuality: no labelled test data of several classes; nothing to do")
            return
        test_z, test_y = torch.cat([z for z, _ in parts]), torch.cat([y for _, y in parts])
        train_z, train_y = self.training_latents(trainer, pl_module)
        if train_y.unique().numel() < 2:  # one-class protocol: nothing to classify
            rank_zero_debug("FeatureQuality: the training split holds one class; nothing to do")
            return
        probe = linear_probe_accuracy(
            train_z, train_y, test_z, test_y, self.probe_steps, self.probe_weight_decay
        )
        knn = knn_accuracy(train_z, train_y, test_z, test_y, k=self.knn_k)
        # every process computed the same numbers from the same gathered sets
        pl_module.log("test/linear_probe_acc", probe, sync_dist=True)
        pl_module.log("test/knn_acc", knn, sync_dist=True)

    @torch.no_grad()
    def training_latents(
        self, trainer: "pl.Trainer", pl_module: "pl.LightningModule"
    ) -> tuple[Tensor, Tensor]:
        """Latents (N, D) and labels (N,) of the training split, in order, on the CPU."""
        datamodule: AutoencoderDataModule = trainer.datamodule
        latents, labels, seen = [], [], 0
        model = autoencoder_of(pl_module)
        was_training = model.training
        model.eval()
        for batch in datamodule.ordered_batches("train", _ENCODE_BATCH, model.device):
            if self.max_train is not None and seen >= self.max_train:
                break
            keep = len(batch) if self.max_train is None else min(len(batch), self.max_train - seen)
            latents.append(model.latent(batch).float().flatten(1)[:keep].cpu())
            labels.append(batch.labels[:keep].cpu())
            seen += keep
        model.train(was_training)
        return torch.cat(latents), torch.cat(labels)
