"""The shared LightningModule: holds a torch autoencoder, its optimizer and scheduler, and runs the steps."""

from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from ae_lightning import multistep
from ae_lightning.autoencoders import (
    Conditional,
    LatentModel,
    Localizes,
    ReadsDatasetSize,
    SeveralOptimizers,
)
from ae_lightning.batch import Batch
from ae_lightning.data.contract import AutoencoderDataModule
from ae_lightning.evaluation import EvaluationMetric, Evaluator
from ae_lightning.evaluation.one_class import DEFAULT_ANOMALY_QUANTILE
from ae_lightning.models import optimization
from ae_lightning.models.checkpointing import CheckpointState
from ae_lightning.models.optimization import DEFAULT_OPTIMIZER


class AutoencoderModule(CheckpointState, LightningModule):
    """Trains, validates, tests and predicts with one torch model (`self.model`, an autoencoder or another
    `autoencoders.LatentModel`), which a variant
    builds in `build_autoencoder`; logs `{stage}/loss` and every loss term, and what `Evaluator` measures.

    Args:
        optimizer: optimizer class and its arguments (default `DEFAULT_OPTIMIZER`: Adam, lr 1e-3, fused; a
            config changes what it must, e.g. `--model.optimizer.lr 0.01`).
        lr_scheduler: optional learning-rate scheduler, stepped every epoch; ReduceLROnPlateau watches
            `val/loss`.
        optimizers: for a model that trains with several optimizers (a discriminator beside the
            autoencoder: `autoencoders.SeveralOptimizers`), the optimizer of each, by the name the model
            gives it (`--model.optimizers '{"discriminator": {"class_path": "torch.optim.SGD", ...}}'`); those
            not named get their own `optimizer`.
        lr_schedulers: the same for learning-rate schedulers: by name, else each its own `lr_scheduler`.
        steps_per_call: optimizer steps per Lightning training step (K). With K > 1 each training item
            holds K batches (the CLI tells the datamodule) and the module steps through them in one call, so
            Lightning's per-step work (hooks, logging, progress bar) runs once per K steps. A step is still
            one optimizer step (one iteration over all of a model's optimizers, when it has several):
            `global_step`, `max_steps` and checkpoint names count these steps, and K
            steps in one call give the weights of K calls of one step. `train/*` is then the mean over a
            call's K batches, sent to the loggers after every call that passes a multiple of
            `log_every_n_steps` optimizer steps, and keyed (as validation is) by optimizer step.
        anomaly_quantile: the one-class threshold rule: with anomaly targets in the data (the datamodule's
            `normal_classes`), every validation pass sets the threshold to this quantile of the anomaly
            scores of the (normal) validation images, so about (1 - q) of normal data is flagged; it is saved
            in the checkpoint, used by `test` for `test/f1` and by `predict` for the `pred_anomaly` flag.
        metrics: further metrics (`ae_lightning.evaluation.EvaluationMetric`) for validation and test,
            besides those the model's capabilities bring (`evaluation.default_metrics`): one class each,
            listed in the config (`--model.metrics+=...`); not saved in checkpoints.
        **model_args: the arguments of the variant's torch model (`ae_lightning.autoencoders`).
    """

    def __init__(
        self,
        optimizer: OptimizerCallable = DEFAULT_OPTIMIZER,
        lr_scheduler: LRSchedulerCallable | None = None,
        optimizers: dict[str, OptimizerCallable] | None = None,
        lr_schedulers: dict[str, LRSchedulerCallable] | None = None,
        steps_per_call: int = 1,
        anomaly_quantile: float = DEFAULT_ANOMALY_QUANTILE,
        metrics: list[EvaluationMetric] | None = None,
        **model_args: Any,
    ) -> None:
        super().__init__()
        self.steps_per_call = multistep.check_steps_per_call(steps_per_call)
        self.model = self.build_autoencoder(**model_args)
        # saved as lists, the form YAML and the datamodule's hparams hold (Lightning requires equal values);
        # save_hyperparameters reads `model_args` from this frame
        model_args.update(image_shape=list(self.model.image_shape), value_range=list(self.model.value_range))
        ignored = ["optimizer", "lr_scheduler", "optimizers", "lr_schedulers", "metrics"]
        self.save_hyperparameters(ignore=ignored + list(self.model.evaluation_arguments))
        self.optimizer = optimization.optimizer_callable(optimizer)
        self.lr_scheduler = lr_scheduler
        self.part_optimizers = {
            name: optimization.optimizer_callable(given) for name, given in (optimizers or {}).items()
        }
        self.part_lr_schedulers = dict(lr_schedulers or {})
        optimization.check_part_names(self.model, self.part_optimizers, "optimizers")
        optimization.check_part_names(self.model, self.part_lr_schedulers, "lr_schedulers")
        # K steps per call, and several optimizers, are taken by the module itself (Lightning's "manual
        # optimization"): Lightning's automatic path drives one optimizer
        self.automatic_optimization = steps_per_call == 1 and not isinstance(self.model, SeveralOptimizers)
        self.evaluator = Evaluator(self.model, anomaly_quantile, metrics or ())
        example = torch.zeros(2, *self.model.image_shape)
        # lets the model summary show input and output sizes
        conditional = isinstance(self.model, Conditional)
        self.example_input_array = (example, torch.zeros(2, dtype=torch.long)) if conditional else example
        self._calls_warning = multistep.CallsWarning()
        #: (value, algorithm) of the gradient clipping that K steps per call apply themselves (Lightning clips
        #: automatic steps only): taken from the trainer's by `multistep.take_gradient_clipping`
        self.gradient_clipping: tuple[float, str] | None = None

    def setup(self, stage: str) -> None:
        """A conditional model checks the range of the data's labels once, here, rather than in every step; a
        model that reads the training set's size and was not given one takes it from the data; a model with
        several optimizers refuses 16-mixed."""
        optimization.check_precision(self.trainer, self.model)
        datamodule = self.trainer.datamodule
        if not isinstance(datamodule, AutoencoderDataModule):
            return
        if isinstance(self.model, Conditional):
            label_range = datamodule.label_range()
            if label_range is not None:
                self.model.check_labels(*label_range)
        if isinstance(self.model, ReadsDatasetSize) and self.model.dataset_size is None:
            self.model.dataset_size = datamodule.split_size("train")

    def build_autoencoder(self, **model_args: Any) -> LatentModel:
        """The variant's torch model, built from the config's arguments."""
        raise NotImplementedError(f"{type(self).__name__} must build its autoencoder")

    def forward(self, *inputs: Tensor) -> Tensor:
        """The torch model's output for images (and, for a conditional model, their labels): an autoencoder's
        reconstruction, the code of a model without a decoder."""
        return self.model(*inputs)

    # --- training ---

    def training_step(self, batch: Batch | list[Batch], batch_idx: int) -> Tensor:
        if self.automatic_optimization:
            return self._step(batch, "train")
        return multistep.train_steps(self, batch if isinstance(batch, list) else [batch])

    def _step(self, batch: Batch, stage: str) -> Tensor:
        """Computes the loss terms of a batch, logs their means as `{stage}/{name}`, returns the loss."""
        training = stage == "train"
        if training:
            self.model.step = self.global_step
        terms = self.model.loss_terms(batch)
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
                batch_size=len(batch),
            )
        if training and log_all_terms:
            for name, value in self.model.training_metrics().items():
                self.log(f"train/{name}", value, on_step=True, on_epoch=False)
        return terms["loss"].mean()

    def train_logs_due(self) -> bool:
        """Whether this training step's metrics reach the loggers (every `log_every_n_steps` steps).

        `self.log` costs about as much as a tenth of a small model's step on a CPU (Lightning moves its
        record to the device each time): `train/loss` is logged every step, so that callbacks watching it
        see every value, and the other `train/*` terms only at the steps the loggers write.
        """
        trainer = self.trainer
        every = trainer.log_every_n_steps
        return bool(trainer.fast_dev_run) or (every > 0 and (trainer.global_step + 1) % every == 0)

    def on_fit_start(self) -> None:
        if not self.automatic_optimization:
            self._calls_warning.enter()

    def on_train_start(self) -> None:
        super().on_train_start()
        self._calls_warning.leave(self)

    def teardown(self, stage: str) -> None:
        self._calls_warning.leave(self, warn=False)

    def on_train_epoch_end(self) -> None:
        if not self.automatic_optimization:
            multistep.step_schedulers(self)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if not self.automatic_optimization:
            multistep.clip_gradients(self, optimizer)

    def configure_optimizers(self) -> Any:
        return optimization.configure(self)

    # --- evaluation ---

    def on_validation_epoch_start(self) -> None:
        self.model.start_evaluation()

    def validation_step(self, batch: Batch, batch_idx: int) -> Tensor:
        loss = self._step(batch, "val")
        self.evaluator.validation_batch(self.model, batch)
        return loss

    def on_validation_epoch_end(self) -> None:
        # the same on every process (the states were gathered): averaging keeps Lightning's DDP check quiet
        for name, value in self.evaluator.validation_end().items():
            self.log(f"val/{name}", value, sync_dist=True)

    def on_test_epoch_start(self) -> None:
        self.model.start_evaluation()

    def on_test_start(self) -> None:
        """The metrics take what the data offers (its feature network, for the samples' FID), moved to this
        device here, before the first batch, rather than in one."""
        datamodule = self.trainer.datamodule
        network, pixels = None, None
        if isinstance(datamodule, AutoencoderDataModule):
            network = datamodule.feature_network()
            if len(self.model.image_shape) == 3:
                pixels = datamodule.split_size("test") * self.model.image_shape[1] * self.model.image_shape[2]
        self.evaluator.prepare(network, self.device, pixels)

    def test_step(self, batch: Batch, batch_idx: int) -> Tensor:
        loss = self._step(batch, "test")
        self.evaluator.test_batch(self.model, batch)
        return loss

    def on_test_epoch_end(self) -> None:
        # the same on every process (the states were gathered): averaging keeps Lightning's DDP check quiet
        for name, value in self.evaluator.test_end().items():
            self.log(f"test/{name}", value, sync_dist=True)

    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:
        """Latent code, anomaly score, anomaly map (a model that localises), dataset index, label (when the
        batch has one) and, when the module holds an anomaly threshold, the decision `pred_anomaly` = score >
        threshold, of every item."""
        prediction = {"latent": self.model.latent(batch), "anomaly_score": self.model.anomaly_score(batch)}
        if isinstance(self.model, Localizes) and self.model.localizes():
            prediction["anomaly_map"] = self.model.anomaly_map(batch)
        if batch.index is not None:
            prediction["index"] = batch.index
        if batch.labels is not None:
            prediction["labels"] = batch.labels
        if self.anomaly_threshold is not None:
            prediction["pred_anomaly"] = prediction["anomaly_score"] > self.anomaly_threshold
        return prediction

    @property
    def anomaly_threshold(self) -> float | None:
        """The one-class threshold chosen on validation (or loaded with a checkpoint), if any."""
        return self.evaluator.threshold

    @anomaly_threshold.setter
    def anomaly_threshold(self, value: float | None) -> None:
        self.evaluator.threshold = value
