"""The base of every model: its encoder and the interface the framework uses (`LatentModel`), and of every
autoencoder: its decoder and likelihood (`Autoencoder`)."""

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ae_lightning.autoencoders.interface import Localizes, Reconstructs
from ae_lightning.autoencoders.scoring import (
    MapMeasure,
    ScoreFromMap,
    ScoreNormalization,
    ScoreShape,
    check_score_shape,
)
from ae_lightning.autoencoders.similarity import ssim_loss
from ae_lightning.batch import Batch
from ae_lightning.errors import ConfigError
from ae_lightning.nets import DEFAULT_HIDDEN_DIMS, Backbone, build_decoder, build_encoder
from ae_lightning.value_range import check_value_range

Likelihood = Literal["gaussian", "bernoulli", "ssim"]
#: where a model's codes live (`LatentModel.latent_space`)
LatentSpace = Literal["euclidean", "sphere", "poincare_ball", "discrete"]


class LatentModel(nn.Module, ABC):
    """A model in plain PyTorch that maps inputs to codes and owns its objective: what every model of the
    framework has, decoder or not. `Autoencoder` adds the decoder; a model without one (Deep SVDD, whose
    score is a distance in code space) derives from this class directly and is not `Reconstructs`.

    Train it in any loop: `loss = model.loss_terms(batch)["loss"].mean()`. `model.train()` gives the
    training objective, `model.eval()` the evaluation one; `step` (optimizer steps taken) drives schedules.

    Args:
        latent_dim: size of the code.
        backbone: `mlp` (fully connected) or `conv` (stride-2 convolutions, images of any size).
        hidden_dims: widths of the hidden layers (mlp) or channels of the convolutions (conv), from the image
            side; a decoder mirrors them. Default: [400] for mlp, [32, 64] for conv.
        image_shape: (C, H, W) of the images, or (D,) of vector data (MLP only); the CLI takes it from the
            datamodule.
        value_range: range of the data, [-1, 1] or [0, 1]; the CLI takes it from the datamodule.
        bias: whether the encoder's and decoder's layers have bias terms. False gives bias-free networks
            (Deep SVDD needs them; an autoencoder pretrained for it must have them too).
    """

    #: arguments that set only how the model is evaluated, not what it learns (kept out of a checkpoint's
    #: hyperparameters, so `test --model.<name> N --ckpt_path X` uses N)
    evaluation_arguments: tuple[str, ...] = ()
    #: where the codes live: R^D, the unit sphere, the Poincaré ball, or codebook entries. A sampler fitted
    #: on codes (`ae_lightning.samplers`) asks for R^D; the models whose codes live elsewhere declare it
    latent_space: LatentSpace = "euclidean"

    def __init__(
        self,
        latent_dim: int = 20,
        backbone: Backbone = "mlp",
        hidden_dims: Sequence[int] | None = None,
        image_shape: Sequence[int] = (1, 28, 28),
        value_range: Sequence[float] = (0.0, 1.0),
        bias: bool = True,
    ) -> None:
        super().__init__()
        if latent_dim <= 0:
            raise ConfigError(f"latent_dim must be a positive number of latent units, got {latent_dim}")
        if backbone not in DEFAULT_HIDDEN_DIMS:
            raise ConfigError(f"backbone must be one of {list(DEFAULT_HIDDEN_DIMS)}, got {backbone!r}")
        hidden_dims = list(DEFAULT_HIDDEN_DIMS[backbone] if hidden_dims is None else hidden_dims)
        if any(width <= 0 for width in hidden_dims) or (backbone == "conv" and not hidden_dims):
            raise ConfigError(
                f"hidden_dims must be positive sizes (at least one for the conv backbone), got {hidden_dims}"
            )
        value_range = check_value_range(value_range)
        image_shape = tuple(int(size) for size in image_shape)
        if len(image_shape) not in (1, 3) or min(image_shape) < 1:
            raise ConfigError(
                f"image_shape must be (channels, height, width), or (D,) for vectors, got {list(image_shape)}"
            )
        if len(image_shape) == 1 and backbone == "conv":
            raise ConfigError(
                f"the conv backbone needs images (C, H, W), but the data are vectors of {image_shape[0]} "
                "numbers: use --model.backbone mlp"
            )
        self.latent_dim = latent_dim
        self.backbone = backbone
        self.hidden_dims = tuple(hidden_dims)
        self.image_shape: tuple[int, ...] = image_shape
        self.value_range: tuple[float, float] = value_range
        self.bias = bool(bias)
        self.step = 0  # optimizer steps taken: the training loop sets it
        self.add_networks()
        if not self.bias:
            # a variant whose networks are its own (e.g. label-conditioned) may not honour the flag
            networks = ("encoder.", "decoder.")
            kept = [n for n, _ in self.named_parameters() if n.startswith(networks) and n.endswith(".bias")]
            if kept:
                raise ConfigError(
                    f"{type(self).__name__} cannot drop the bias terms of its networks ({kept[0]}): "
                    "use --model.bias true"
                )

    def add_networks(self) -> None:
        """Builds the networks and sets them as attributes, once, from `__init__`: here the encoder."""
        self.encoder = build_encoder(
            self.backbone, self.image_shape, self.hidden_dims, self.encoder_outputs(), bias=self.bias
        )

    def encoder_outputs(self) -> int:
        """How many numbers the encoder gives per image (a VAE needs two per latent unit)."""
        return self.latent_dim

    # --- on tensors: what an exported model computes ---

    def code(self, x: Tensor) -> Tensor:
        """The deterministic code of images (B, C, H, W) -> (B, latent_dim)."""
        return self.encoder(x)

    def forward(self, x: Tensor) -> Tensor:
        """The code of `x`, (B, C, H, W) -> (B, latent_dim) (an `Autoencoder` gives its reconstruction)."""
        return self.code(x)

    # --- on batches: what training and evaluation use ---

    @abstractmethod
    def loss_terms(self, batch: Batch) -> dict[str, Tensor]:
        """Per-image loss terms, each (B,); the key `loss` is what is minimised."""

    def latent(self, batch: Batch) -> Tensor:
        """Deterministic code of each image, for use as features: (B, latent_dim)."""
        return self.code(batch.inputs)

    @abstractmethod
    def anomaly_score(self, batch: Batch) -> Tensor:
        """The anomaly score of each image (higher: more anomalous), (B,)."""

    def training_metrics(self) -> dict[str, Tensor | float]:
        """Numbers describing the model after a training step (e.g. a weight that follows the step)."""
        return {}

    def start_evaluation(self) -> None:
        """Called before each evaluation pass (a variant restarts its fixed evaluation noise)."""

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype


class Autoencoder(LatentModel, Reconstructs, Localizes):
    """An autoencoder in plain PyTorch that owns its objective: the plain (undercomplete) one, and the base
    of every variant with a decoder, which overrides what is its own (`loss_terms`, `code`, ...).

    Train it as a `LatentModel`; `model.train()` may corrupt, sample or update a codebook.

    Args:
        latent_dim, backbone, hidden_dims, image_shape, value_range, bias: as `LatentModel`; the decoder
            mirrors the encoder, and its output activation follows the value range (tanh or sigmoid).
        likelihood: `gaussian` (reconstruction term = summed squared error), `bernoulli` (binary
            cross-entropy with logits; needs data in [0, 1]) or `ssim` (images: (1 - SSIM) x pixels, the
            loss of AE-SSIM; not a likelihood).
        score_smoothing: the anomaly score's Gaussian, in pixels: the residual (image - reconstruction) is
            smoothed before it is squared, so a stroke a pixel aside counts less than a missing one (0: the
            score is the reconstruction loss itself).
        score_normalization: `intensity` divides the anomaly score by the image's total intensity above the
            bottom of the value range (a thin digit is not normal merely because little of it can be wrong).
            Either shaping makes the score the squared residual of the output mean (`scoring`); only models
            whose score is a reconstruction error take them.
        map_measure: what each pixel of the anomaly map (`anomaly_map`, (B, H, W)) measures: `squared_error`
            of the residual (smoothed first by `score_smoothing`), averaged over channels, or `ssim`: 1 - the
            local SSIM (AE-SSIM, Bergmann et al. 2019), smoothed after by `score_smoothing`.
        score_from_map: `max` or `mean` makes the image score that of its anomaly map (divided by the ink
            with `score_normalization: intensity`); `none` keeps the reconstruction error.
    """

    #: whether `anomaly_score` is a reconstruction error, which `score_smoothing` and `score_normalization`
    #: shape (a VAE scores by its negative ELBO and declares False)
    scores_by_reconstruction: bool = True

    def __init__(
        self,
        latent_dim: int = 20,
        backbone: Backbone = "mlp",
        hidden_dims: Sequence[int] | None = None,
        likelihood: Likelihood = "gaussian",
        image_shape: Sequence[int] = (1, 28, 28),
        value_range: Sequence[float] = (0.0, 1.0),
        bias: bool = True,
        score_smoothing: float = 0.0,
        score_normalization: ScoreNormalization = "none",
        map_measure: MapMeasure = "squared_error",
        score_from_map: ScoreFromMap = "none",
    ) -> None:
        if likelihood not in ("gaussian", "bernoulli", "ssim"):
            raise ConfigError(f"likelihood must be 'gaussian', 'bernoulli' or 'ssim', got {likelihood!r}")
        # before the base builds the networks (`build_networks` may read it)
        self.likelihood = likelihood
        super().__init__(latent_dim, backbone, hidden_dims, image_shape, value_range, bias)
        if likelihood == "bernoulli" and self.value_range != (0.0, 1.0):
            raise ConfigError(
                f"likelihood 'bernoulli' models data in [0, 1], but the data is in {list(self.value_range)}: "
                "set --data.value_range '[0, 1]' (and --data.binarize true for binarised images), "
                "or use likelihood 'gaussian'"
            )
        if likelihood == "ssim" and len(self.image_shape) != 3:
            raise ConfigError("likelihood 'ssim' compares images (C, H, W): vector data take 'gaussian'")
        name, by_reconstruction = type(self).__name__, self.scores_by_reconstruction
        shape = (score_smoothing, score_normalization, self.image_shape, name, by_reconstruction)
        check_score_shape(*shape, map_measure, score_from_map)
        #: how the map and the score are made of a reconstruction
        self.score_shape = ScoreShape(
            float(score_smoothing), score_normalization, map_measure, score_from_map, self.value_range
        )

    def add_networks(self) -> None:
        """Sets the encoder and the decoder that `build_networks` makes (in that order)."""
        self.encoder, self.decoder = self.build_networks()

    def build_networks(self) -> tuple[nn.Module, nn.Module]:
        """The encoder, (B, C, H, W) -> (B, `encoder_outputs()`), and the decoder, codes -> raw output."""
        encoder = build_encoder(
            self.backbone, self.image_shape, self.hidden_dims, self.encoder_outputs(), bias=self.bias
        )
        decoder = build_decoder(
            self.backbone, self.latent_dim, self.hidden_dims, self.image_shape, bias=self.bias
        )
        return encoder, decoder

    # --- on tensors: what an exported model computes ---

    def code(self, x: Tensor) -> Tensor:
        """The deterministic code of images (B, C, H, W) -> (B, latent_dim): what `decode` takes."""
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        """Code (B, latent_dim) -> mean of the output distribution in data space, (B, C, H, W)."""
        return self.output_mean(self.decoder(z))

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruction of `x`, (B, C, H, W) -> (B, C, H, W)."""
        return self.decode(self.code(x))

    def output_mean(self, decoder_output: Tensor) -> Tensor:
        """Maps raw decoder output to the mean of the output distribution in the data's value range."""
        if self.likelihood != "bernoulli" and self.value_range == (-1.0, 1.0):
            return torch.tanh(decoder_output)
        return torch.sigmoid(decoder_output)

    def reconstruction_loss(self, decoder_output: Tensor, x: Tensor) -> Tensor:
        """Negative log-likelihood of `x` per image (up to constants), summed over pixels: (B,).

        Computed in float32 whatever the precision: a sum over 784 pixels in bfloat16 keeps ~3 digits.
        """
        decoder_output, x = decoder_output.float(), x.float()
        if self.likelihood == "ssim":
            return ssim_loss(self.output_mean(decoder_output), x, self.value_range)
        if self.likelihood == "bernoulli":
            per_pixel = F.binary_cross_entropy_with_logits(decoder_output, x, reduction="none")
        else:
            per_pixel = (self.output_mean(decoder_output) - x).square()
        return per_pixel.flatten(1).sum(1)

    def reconstruction_error(self, inputs: Tensor, target: Tensor) -> Tensor:
        """Loss of reconstructing `target` from the code of `inputs` (the same or corrupted images): (B,)."""
        return self.reconstruction_loss(self.decoder(self.code(inputs)), target)

    # --- on batches: what training and evaluation use ---

    def loss_terms(self, batch: Batch) -> dict[str, Tensor]:
        """Per-image loss terms, each (B,); the key `loss` is what is minimised."""
        recon = self.reconstruction_error(batch.inputs, batch.inputs)
        return {"loss": recon, "recon": recon}

    def reconstruct(self, batch: Batch) -> Tensor:
        """Reconstruction of each image (for a VAE: the decoded posterior mean), (B, C, H, W)."""
        return self(batch.inputs)

    def reconstruction_score(self, inputs: Tensor, target: Tensor) -> Tensor:
        """The anomaly score of reconstructing `target` from the code of `inputs`: the reconstruction error,
        or shaped as the score options say (`score_shape`). (B,)"""
        if not self.score_shape.reshapes:
            return self.reconstruction_error(inputs, target)
        return self.score_shape.score(target, self.decode(self.code(inputs)))

    def anomaly_map(self, batch: Batch) -> Tensor:
        """Where each image is anomalous: the map of its reconstruction (`score_shape`), (B, H, W) float32."""
        return self.score_shape.map(batch.inputs, self.reconstruct(batch))

    def localizes(self) -> bool:
        return len(self.image_shape) == 3

    def anomaly_score(self, batch: Batch) -> Tensor:
        """Reconstruction error of each image, shaped as the score options say (higher: anomalous), (B,)."""
        return self.reconstruction_score(batch.inputs, batch.inputs)
