"""The shared base of every autoencoder: network construction, the training step, logging, optimizers."""

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torchmetrics import MeanSquaredError
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure
from typing_extensions import Self

from ae_lightning.anomaly import DEFAULT_ANOMALY_QUANTILE, OneClassMetrics, ScoreQuantile
from ae_lightning.checkpoints import checkpoint_bytes, read_checkpoint
from ae_lightning.errors import CheckpointError, ConfigError
from ae_lightning.models.rng import RNG_STATES_KEY, rng_states, set_rng_states
from ae_lightning.nets import DEFAULT_HIDDEN_DIMS, Backbone, build_decoder, build_encoder
from ae_lightning.value_range import check_value_range

Likelihood = Literal["gaussian", "bernoulli"]
Stage = Literal["train", "val", "test"]

#: the checkpoint entry holding the anomaly threshold chosen on validation
ANOMALY_THRESHOLD_KEY = "anomaly_threshold"


def images_of(batch: Tensor | Sequence[Tensor]) -> Tensor:
    """The images of a batch that is either an image tensor or an (images, labels, ...) sequence."""
    return batch if isinstance(batch, Tensor) else batch[0]


def anomaly_targets_of(batch: Tensor | Sequence[Tensor]) -> Tensor | None:
    """The is_anomaly targets (B,) of an (images, labels, is_anomaly) batch (one-class protocol), or None."""
    return None if isinstance(batch, Tensor) or len(batch) < 3 else batch[2]


class AutoencoderBase(LightningModule):
    """Shared base of every autoencoder, and the plain autoencoder's objective.

    Builds encoder and decoder, runs the step of every stage and logs `{stage}/loss` and each loss term.
    A variant overrides only what is its own (`loss_terms`, `encode`).

    Args:
        latent_dim: size of the code.
        backbone: `mlp` (fully connected) or `conv` (stride-2 convolutions, square images).
        hidden_dims: widths of the hidden layers (mlp) or channels of the convolutions (conv), from the image
            side; the decoder mirrors them. Default: [400] for mlp, [32, 64] for conv.
        likelihood: `gaussian` (reconstruction term = summed squared error) or `bernoulli` (binary
            cross-entropy with logits; needs data in [0, 1]).
        image_shape: (C, H, W) of the images; the CLI takes it from the datamodule.
        value_range: range of the data, [-1, 1] or [0, 1]; the CLI takes it from the datamodule. It picks
            the output activation of the gaussian decoder (tanh or sigmoid).
        optimizer: optimizer class and its arguments (default Adam, lr 1e-3).
        lr_scheduler: optional learning-rate scheduler, stepped every epoch; ReduceLROnPlateau watches
            `val/loss`.
        steps_per_call: optimizer steps per Lightning training step (K). With K > 1 each training item
            holds K batches (the CLI tells the datamodule) and the model steps through them in one call, so
            Lightning's per-step work (hooks, logging, progress bar) runs once per K steps. A step is still
            one optimizer step: `global_step`, `max_steps` and checkpoint names count optimizer steps, and K
            steps in one call give the weights of K calls of one step. `train/*` is then the mean over a
            call's K batches, sent to the loggers after every call that passes a multiple of
            `log_every_n_steps` optimizer steps, and keyed (as validation is) by optimizer step.
        anomaly_quantile: the one-class threshold rule. When the data carries anomaly targets (the
            datamodule's `normal_classes`), every validation epoch sets the anomaly threshold to this quantile
            of the anomaly scores of the (normal) validation images, so about (1 - q) of normal data is
            flagged; it is saved in the checkpoint, used by `test` for `test/f1` and by `predict` for the
            `is_anomaly` flag. `test/auroc` and `test/aupr` need no threshold.
    """

    #: arguments that set only how the model is evaluated, not what it learns: kept out of the hyperparameters
    #: saved in checkpoints, because the CLI gives a checkpoint's hyperparameters precedence over the command
    #: line, and `test --model.<name> N --ckpt_path X` must use N
    evaluation_arguments: tuple[str, ...] = ()

    def __init__(
        self,
        latent_dim: int = 20,
        backbone: Backbone = "mlp",
        hidden_dims: Sequence[int] | None = None,
        likelihood: Likelihood = "gaussian",
        image_shape: Sequence[int] = (1, 28, 28),
        value_range: Sequence[float] = (0.0, 1.0),
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        steps_per_call: int = 1,
        anomaly_quantile: float = DEFAULT_ANOMALY_QUANTILE,
    ) -> None:
        super().__init__()
        if steps_per_call < 1:
            raise ConfigError(f"steps_per_call must be at least 1 optimizer step, got {steps_per_call}")
        if latent_dim <= 0:
            raise ConfigError(f"latent_dim must be a positive number of latent units, got {latent_dim}")
        if backbone not in DEFAULT_HIDDEN_DIMS:
            raise ConfigError(f"backbone must be one of {list(DEFAULT_HIDDEN_DIMS)}, got {backbone!r}")
        if likelihood not in ("gaussian", "bernoulli"):
            raise ConfigError(f"likelihood must be 'gaussian' or 'bernoulli', got {likelihood!r}")
        hidden_dims = list(DEFAULT_HIDDEN_DIMS[backbone] if hidden_dims is None else hidden_dims)
        if any(width <= 0 for width in hidden_dims) or (backbone == "conv" and not hidden_dims):
            raise ConfigError(
                f"hidden_dims must be positive sizes (at least one for the conv backbone), got {hidden_dims}"
            )
        # hparams hold lists (as YAML does), so they equal the datamodule's and reload from hparams.yaml
        value_range = list(check_value_range(value_range))
        image_shape = [int(size) for size in image_shape]
        if len(image_shape) != 3 or min(image_shape) < 1:
            raise ConfigError(f"image_shape must be (channels, height, width), got {image_shape}")
        if likelihood == "bernoulli" and value_range != [0.0, 1.0]:
            raise ConfigError(
                f"likelihood 'bernoulli' models data in [0, 1], but the data is in {value_range}: "
                "set --data.value_range '[0, 1]' (and --data.binarize true for binarised images), "
                "or use likelihood 'gaussian'"
            )
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler", *self.evaluation_arguments])
        self.latent_dim = latent_dim
        self.hidden_dims = tuple(hidden_dims)
        self.likelihood = likelihood
        self.image_shape = tuple(image_shape)
        self.value_range: tuple[float, float] = tuple(value_range)
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.steps_per_call = steps_per_call
        # K steps per call are taken by the model itself (Lightning's "manual optimization")
        self.automatic_optimization = steps_per_call == 1
        self.encoder = build_encoder(backbone, self.image_shape, hidden_dims, self._encoder_out_dim())
        self.decoder = build_decoder(backbone, latent_dim, hidden_dims, self.image_shape)
        # lets the model summary show input and output sizes
        self.example_input_array = torch.zeros(2, *self.image_shape)
        self._resumed_rng_states: dict[str, Any] | None = None
        # the one-class evaluation, shared by every model: it needs only `anomaly_score`
        self.val_anomaly_scores = ScoreQuantile(anomaly_quantile)
        self.test_one_class = OneClassMetrics()
        self.anomaly_threshold: float | None = None
        # reconstruction quality at test, over the whole test set (and all devices), in the data's units
        data_range = self.value_range[1] - self.value_range[0]
        self.test_mse = MeanSquaredError()
        self.test_psnr = PeakSignalNoiseRatio(data_range=data_range)
        self.test_ssim = StructuralSimilarityIndexMeasure(data_range=data_range)

    def _encoder_out_dim(self) -> int:
        """How many numbers the encoder gives per image (a VAE needs two per latent unit)."""
        return self.latent_dim

    # --- the interface every model shares ---

    def encode(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """(B, C, H, W) -> code (B, latent_dim)."""
        return self.encoder(x)

    def latent(self, x: Tensor) -> Tensor:
        """Deterministic code of `x` for use as features, (B, latent_dim)."""
        return self.encode(x)

    def decode(self, z: Tensor) -> Tensor:
        """Code (B, latent_dim) -> mean of the output distribution in data space, (B, C, H, W)."""
        return self.output_mean(self.decoder(z))

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruction of `x`, (B, C, H, W) -> (B, C, H, W)."""
        return self.decode(self.latent(x))

    def anomaly_score(self, x: Tensor) -> Tensor:
        """Reconstruction error of each image, (B, C, H, W) -> (B,)."""
        return self.reconstruction_loss(self.decoder(self.latent(x)), x)

    def output_mean(self, decoder_output: Tensor) -> Tensor:
        """Maps raw decoder output to the mean of the output distribution in the data's value range."""
        if self.likelihood == "gaussian" and self.value_range == (-1.0, 1.0):
            return torch.tanh(decoder_output)
        return torch.sigmoid(decoder_output)

    def reconstruction_loss(self, decoder_output: Tensor, x: Tensor) -> Tensor:
        """Negative log-likelihood of `x` per image (up to constants), summed over pixels: (B,).

        Computed in float32 whatever the precision: a sum over 784 pixels in bfloat16 keeps ~3 digits.
        """
        decoder_output, x = decoder_output.float(), x.float()
        if self.likelihood == "bernoulli":
            per_pixel = F.binary_cross_entropy_with_logits(decoder_output, x, reduction="none")
        else:
            per_pixel = (self.output_mean(decoder_output) - x).square()
        return per_pixel.flatten(1).sum(1)

    def reconstruction_error(self, inputs: Tensor, target: Tensor) -> Tensor:
        """Loss of reconstructing `target` from the code of `inputs` (the same or corrupted images): (B,)."""
        return self.reconstruction_loss(self.decoder(self.encode(inputs)), target)

    def loss_terms(self, x: Tensor, stage: Stage) -> dict[str, Tensor]:
        """Per-image loss terms, each (B,); the key `loss` is what is minimised. Variants override this."""
        recon = self.reconstruction_error(x, x)
        return {"loss": recon, "recon": recon}

    def conditions_of(self, batch: Tensor | Sequence[Tensor]) -> dict[str, Tensor]:
        """What the model takes from a batch besides the images, as keyword arguments of `loss_terms`,
        `forward`, `latent` and `anomaly_score` (a conditional model's labels); none by default."""
        return {}

    # --- Lightning ---

    def _step(self, batch: Tensor | Sequence[Tensor], stage: Stage) -> Tensor:
        """Computes the loss terms of a batch, logs their means as `{stage}/{name}`, returns the loss."""
        x = images_of(batch)
        terms = self.loss_terms(x, stage, **self.conditions_of(batch))
        training = stage == "train"
        log_all_terms = not training or self.train_logs_due()
        for name, per_image in terms.items():
            if name != "loss" and not log_all_terms:
                continue
            self.log(
                f"{stage}/{name}",
                per_image.mean(),
                on_step=training,
                on_epoch=not training,
                # train/loss reaches the progress bar through the loss returned (callbacks.ProgressBar):
                # Lightning would turn a prog_bar metric into a number, waiting for the device, every step
                prog_bar=name == "loss" and not training,
                # validation and test numbers are means over the whole set, not one rank's share
                sync_dist=not training,
                batch_size=x.shape[0],
            )
        if training and log_all_terms:
            for name, value in self.train_metrics().items():
                self.log(f"train/{name}", value, on_step=True, on_epoch=False)
        is_anomaly = anomaly_targets_of(batch)
        if is_anomaly is not None and stage != "train":
            self._evaluate_anomalies(batch, is_anomaly, stage)
        return terms["loss"].mean()

    def train_metrics(self) -> dict[str, Tensor | float]:
        """Training metrics besides the loss terms (the state after the step, e.g. a weight that changes with
        the step), logged as `train/<name>` with them; none by default. Variants override this."""
        return {}

    def train_logs_due(self) -> bool:
        """Whether this training step's metrics reach the loggers (every `log_every_n_steps` steps).

        `self.log` costs about 0.2 ms a call on a CPU (Lightning moves its record to the device each time),
        as much as a tenth of a small model's step: `train/loss` is logged every step, so that callbacks
        watching it see every value, and the other `train/*` terms only at the steps the loggers write
        (their rows are the same as if they were logged every step).
        """
        trainer = self.trainer
        every = trainer.log_every_n_steps
        return bool(trainer.fast_dev_run) or (every > 0 and (trainer.global_step + 1) % every == 0)

    @torch.no_grad()
    def _evaluate_anomalies(self, batch: Sequence[Tensor], is_anomaly: Tensor, stage: Stage) -> None:
        """Validation: collects the scores of normal images for the threshold. Test: updates AUROC, AUPR
        and F1 (at the threshold, when one was chosen), logged as `test/auroc`, `test/aupr`, `test/f1`."""
        scores = self.anomaly_score(images_of(batch), **self.conditions_of(batch)).float()
        if stage == "val":
            self.val_anomaly_scores.update(scores[~is_anomaly.bool()])
            return
        metrics = self.test_one_class
        metrics.update(scores, is_anomaly, self.anomaly_threshold)
        size = len(scores)
        self.log("test/auroc", metrics.auroc, on_step=False, on_epoch=True, batch_size=size)
        self.log("test/aupr", metrics.aupr, on_step=False, on_epoch=True, batch_size=size)
        if self.anomaly_threshold is not None:
            self.log("test/f1", metrics.f1, on_step=False, on_epoch=True, batch_size=size)
            self.log("test/anomaly_threshold", self.anomaly_threshold, on_epoch=True, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        # the threshold of the weights just validated: the checkpoint saved after this validation holds it
        if self.val_anomaly_scores.update_count > 0:
            self.anomaly_threshold = self.val_anomaly_scores.compute().item()
            self.val_anomaly_scores.reset()
            # the same on every process (scores were gathered): averaging keeps Lightning's DDP check quiet
            self.log("val/anomaly_threshold", self.anomaly_threshold, sync_dist=True)

    def training_step(self, batch: Tensor | Sequence[Tensor] | list, batch_idx: int) -> Tensor | None:
        if self.automatic_optimization:
            return self._step(batch, "train")
        return self._steps(batch)

    def _steps(self, batches: list) -> Tensor:
        """Up to `steps_per_call` optimizer steps, one per batch, each exactly what one automatic step does
        (zero the gradients, backward, step); stops at `max_steps`. Logs the means over the batches and
        returns the mean loss (detached: the steps are taken)."""
        optimizer = self.optimizers()
        sums: dict[str, Tensor] = {}
        count = 0
        first_step = self.trainer.global_step
        for batch in batches:
            if 0 <= self.trainer.max_steps <= self.trainer.global_step:
                break
            x = images_of(batch)
            terms = self.loss_terms(x, "train", **self.conditions_of(batch))
            optimizer.zero_grad()
            self.manual_backward(terms["loss"].mean())
            optimizer.step()
            for name, per_image in terms.items():
                sums[name] = sums.get(name, 0) + per_image.detach().sum()
            count += x.shape[0]
        means = {f"train/{name}": total / count for name, total in sums.items()}
        means |= {f"train/{name}": torch.as_tensor(value) for name, value in self.train_metrics().items()}
        for name, mean in means.items():
            # callbacks (a checkpoint monitoring train/loss) see every call's means; the loggers get them
            # by optimizer step, below; the progress bar gets the returned loss
            self.log(name, mean, on_step=True, logger=False, batch_size=count)
        self._log_by_optimizer_step(first_step, means)
        return means["train/loss"]

    def _log_by_optimizer_step(self, first_step: int, means: dict[str, Tensor]) -> None:
        """Keeps the loggers' step axis and `log_every_n_steps` in optimizer steps when a call takes several.

        Lightning counts one "batch that stepped" per call, keys logger rows (validation's too) by that count
        and logs training metrics when it is a multiple of `log_every_n_steps`. Here the count is set to the
        optimizer steps taken (Lightning adds the call's last), and the means of a call that passed a multiple
        of `log_every_n_steps` go to the loggers at the call's last step, as Lightning would log one step.
        """
        trainer = self.trainer
        last_step = trainer.global_step
        trainer.fit_loop.epoch_loop._batches_that_stepped = last_step - 1
        every = trainer.log_every_n_steps
        if not self.loggers or every <= 0 or last_step // every == first_step // every:
            return
        metrics = {name: mean.item() for name, mean in means.items()} | {"epoch": trainer.current_epoch}
        for logger in self.loggers:
            logger.log_metrics(metrics, step=last_step - 1)

    def on_fit_start(self) -> None:
        if not self.automatic_optimization:
            # Lightning compares the calls of an epoch with log_every_n_steps, which counts optimizer steps
            warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) is smaller")

    def on_train_start(self) -> None:
        # the streams of a resumed run are restored when training starts, not at loading: between the two,
        # Lightning's sanity-check validation would draw from them what an unbroken run never drew. (Not at
        # the first epoch's start: a run resumed mid-epoch goes on without starting that epoch again.)
        if self._resumed_rng_states is not None:
            set_rng_states(self._resumed_rng_states)
            self._resumed_rng_states = None
        trainer = self.trainer
        steps = trainer.num_training_batches * self.steps_per_call
        if not self.automatic_optimization and trainer.loggers and steps < trainer.log_every_n_steps:
            rank_zero_warn(
                f"an epoch has at most {steps} optimizer steps, fewer than log_every_n_steps "
                f"({trainer.log_every_n_steps}): set --trainer.log_every_n_steps lower to see train/* "
                "within epochs"
            )

    def on_train_epoch_end(self) -> None:
        # with K steps per call Lightning leaves the scheduler to the model: step it where Lightning would
        scheduler = self.lr_schedulers()
        if self.automatic_optimization or scheduler is None:
            return
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            if "val/loss" in self.trainer.callback_metrics:
                scheduler.step(self.trainer.callback_metrics["val/loss"])
        else:
            scheduler.step()

    def validation_step(self, batch: Tensor | Sequence[Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "val")

    def test_step(self, batch: Tensor | Sequence[Tensor], batch_idx: int) -> Tensor:
        loss = self._step(batch, "test")
        self._evaluate_reconstructions(batch)
        return loss

    @torch.no_grad()
    def _evaluate_reconstructions(self, batch: Tensor | Sequence[Tensor]) -> None:
        """Logs `test/mse` (per pixel), `test/psnr` (dB, from the MSE of the whole set) and `test/ssim` (mean
        over images) of the reconstructions `model(x)` (for a VAE: decoded posterior means)."""
        x = images_of(batch)
        reconstruction = self(x, **self.conditions_of(batch)).float()
        x = x.float()
        self.test_mse.update(reconstruction, x)
        self.test_psnr.update(reconstruction, x)
        self.test_ssim.update(reconstruction, x)
        for name in ("mse", "psnr", "ssim"):
            metric = getattr(self, f"test_{name}")
            self.log(f"test/{name}", metric, on_step=False, on_epoch=True, batch_size=x.shape[0])

    def predict_step(self, batch: Tensor | Sequence[Tensor], batch_idx: int) -> dict[str, Tensor]:
        """Latent code, anomaly score, label (when the batch has one) and, when the model holds an anomaly
        threshold, the flag `is_anomaly` = score > threshold, of every image."""
        x, conditions = images_of(batch), self.conditions_of(batch)
        prediction = {
            "latent": self.latent(x, **conditions),
            "anomaly_score": self.anomaly_score(x, **conditions),
        }
        if not isinstance(batch, Tensor) and len(batch) > 1:
            prediction["label"] = batch[1]
        if self.anomaly_threshold is not None:
            prediction["is_anomaly"] = prediction["anomaly_score"] > self.anomaly_threshold
        return prediction

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # the random streams (noise of the VAE and the denoiser, dynamic binarisation) continue from here
        # when the run is resumed, as they would had it not stopped
        checkpoint[RNG_STATES_KEY] = rng_states()
        checkpoint[ANOMALY_THRESHOLD_KEY] = self.anomaly_threshold

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuses weights trained for other data: the same layers would load, but the output activation or
        the meaning of the pixels would silently differ. Keeps the saved random streams for resuming."""
        self._resumed_rng_states = checkpoint.get(RNG_STATES_KEY)
        self.anomaly_threshold = checkpoint.get(ANOMALY_THRESHOLD_KEY)
        trained = checkpoint.get("hyper_parameters", {})
        for name, flag in (("value_range", "--data.value_range"), ("image_shape", "the data")):
            current = list(getattr(self, name))
            if name in trained and list(trained[name]) != current:
                raise CheckpointError(
                    f"the checkpoint was trained on data with {name} {list(trained[name])}, but this run's "
                    f"data has {current}: set {flag} as in the run that made the checkpoint (its config.yaml)"
                )

    @classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: str | Path | IO[bytes],
        map_location: Any = None,
        hparams_file: str | Path | None = None,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Self:
        """Lightning's `load_from_checkpoint`, reading the file as `checkpoints.read_checkpoint` does: whole
        (its checksums verified) and as data only; a missing, damaged or foreign file is a CheckpointError."""
        buffer = checkpoint_bytes(checkpoint_path)  # the file is read once
        read_checkpoint(buffer, map_location="cpu", name=f"checkpoint {checkpoint_path}")
        buffer.seek(0)
        return super().load_from_checkpoint(
            buffer, map_location, hparams_file, strict, weights_only=True, **kwargs
        )

    def configure_optimizers(self):
        optimizer = self.optimizer(self.parameters())
        if self.lr_scheduler is None:
            return optimizer
        scheduler = {"scheduler": self.lr_scheduler(optimizer)}
        # with K steps per call the model steps it (on_train_epoch_end), a plateau one watching val/loss
        if self.automatic_optimization:
            scheduler["monitor"] = "val/loss"
        return {"optimizer": optimizer, "lr_scheduler": scheduler}
