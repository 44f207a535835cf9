"""Deep SVDD (Ruff et al., ICML 2018, "Deep One-Class Classification"): a bias-free encoder phi trained to map
normal data close to a fixed centre c in code space. The anomaly score is the squared distance to c; there is
no decoder to score with, so the model is a `LatentModel` and not `Reconstructs`.

The centre is set from the data before the SVDD objective trains (`initial_centre`, as the authors' code
does, lukasruff/Deep-SVDD-PyTorch `init_center_c`); a training loop of its own::

    model.set_centre(initial_centre(model, training_batches))
    for batch in training_batches:
        loss = model.loss_terms(batch)["loss"].mean()  # ... backward, optimizer step, model.step += 1
"""

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ae_lightning.autoencoders.base import LatentModel
from ae_lightning.batch import Batch
from ae_lightning.errors import CheckpointError, ConfigError
from ae_lightning.nets import build_decoder

Objective = Literal["one-class", "soft-boundary"]


class DeepSVDD(LatentModel):
    """Deep SVDD, one-class or soft-boundary, on a bias-free encoder (Ruff et al. 2018, sections 3.1-3.3).

    - one-class: loss = ||phi(x) - c||^2 per image, score = ||phi(x) - c||^2.
    - soft-boundary: loss = R^2 + (1 / nu) max(0, ||phi(x) - c||^2 - R^2) per image (its batch mean is the
      paper's objective (3) less the weight decay, which is the optimizer's), score = ||phi(x) - c||^2 - R^2.
      R is not trained by gradient: after `warmup_steps` SVDD steps every training batch sets it to the
      (1 - nu) quantile of the batch's distances ||phi(x) - c|| (the authors' `get_radius`), so about a
      fraction nu of the data lies outside the sphere.

    The centre c and the radius R are buffers (saved in checkpoints); c is set once from the training data
    (`set_centre(initial_centre(...))`), and no SVDD loss or score is computed before it is. Under DDP the
    buffers are those of rank 0 (DDP broadcasts them at every step): R is the quantile of rank 0's batch.

    Args:
        objective: `one-class` or `soft-boundary`.
        nu: soft-boundary's bound on the fraction of training data outside the sphere, in (0, 1] (paper: 0.1).
        warmup_steps: soft-boundary: SVDD steps (after pretraining) before R is first updated; R stays 0
            until then (the authors wait 10 epochs).
        pretrain_steps: optimizer steps of pretraining within the run: their loss is the summed squared
            reconstruction error through a bias-free decoder that the model owns for pretraining only. That
            decoder is not a scorer and nothing decodes with it afterwards; the model is not `Reconstructs`.
            The centre is set from the data once these steps are done (0: before the first step).
        pretrained: path of a checkpoint of this framework's autoencoder trained with `--model.bias false` and
            the same backbone, hidden_dims, latent_dim and data: its encoder's weights start this one (the
            authors pretrain an autoencoder). Read as data only; a starting point, not part of what a
            checkpoint of this model needs to be rebuilt.
        centre_eps: entries of c closer to 0 than this are moved to +-centre_eps (a zero entry could be met
            by zero weights; the authors' code, 0.1).
        bias: must be False: with bias terms the network can map every input to c and the objective is met
            by a constant (hypersphere collapse, the paper's Proposition 2).
        **kwargs: `latent_dim`, `backbone`, `hidden_dims`, `image_shape`, `value_range` of `LatentModel`.
    """

    # a checkpoint holds the trained weights: rebuilding it needs not the pretrained file
    evaluation_arguments = ("pretrained",)

    def __init__(
        self,
        objective: Objective = "one-class",
        nu: float = 0.1,
        warmup_steps: int = 0,
        pretrain_steps: int = 0,
        pretrained: str | None = None,
        centre_eps: float = 0.1,
        bias: bool = False,
        **kwargs: Any,
    ) -> None:
        if objective not in ("one-class", "soft-boundary"):
            raise ConfigError(f"objective must be 'one-class' or 'soft-boundary', got {objective!r}")
        if not 0.0 < nu <= 1.0:
            raise ConfigError(f"nu must be a fraction of outliers in (0, 1], got {nu}")
        if warmup_steps < 0 or pretrain_steps < 0:
            raise ConfigError(
                f"warmup_steps and pretrain_steps must be >= 0, got {warmup_steps} and {pretrain_steps}"
            )
        if centre_eps < 0:
            raise ConfigError(f"centre_eps must be >= 0, got {centre_eps}")
        if bias:
            raise ConfigError(
                "DeepSVDD needs bias-free networks (bias false): with bias terms the encoder can map every "
                "input to the centre (hypersphere collapse, Ruff et al. 2018, Proposition 2)"
            )
        self.objective = objective
        self.nu = float(nu)
        self.warmup_steps = warmup_steps
        self.pretrain_steps = pretrain_steps  # before the base builds the networks (`add_networks`)
        self.centre_eps = float(centre_eps)
        super().__init__(bias=False, **kwargs)
        # NaN until set from the data; `has_centre` mirrors it, so no step asks the device whether it is set
        self.register_buffer("centre", torch.full((self.latent_dim,), float("nan")))
        self.register_buffer("radius", torch.zeros(()))
        self.has_centre = False
        self.register_load_state_dict_post_hook(_note_loaded_centre)
        if pretrained:
            self.encoder.load_state_dict(pretrained_encoder(pretrained, self))

    def add_networks(self) -> None:
        """The encoder, and the decoder of in-run pretraining (only when `pretrain_steps` > 0)."""
        super().add_networks()
        if self.pretrain_steps > 0:
            self.pretraining_decoder = build_decoder(
                self.backbone, self.latent_dim, self.hidden_dims, self.image_shape, bias=False
            )

    def set_centre(self, centre: Tensor) -> None:
        """Sets c, (latent_dim,) (see `initial_centre`); from then on the SVDD objective trains."""
        if centre.shape != (self.latent_dim,) or not torch.isfinite(centre).all():
            raise ValueError(f"the centre must be {self.latent_dim} finite numbers, got {list(centre.shape)}")
        self.centre.copy_(centre)
        self.has_centre = True

    def pretraining(self) -> bool:
        """Whether the loss is pretraining's reconstruction error: no centre yet, and steps of it are left."""
        return not self.has_centre and self.step < self.pretrain_steps

    def squared_distance(self, x: Tensor) -> Tensor:
        """||phi(x) - c||^2 of images (B, C, H, W) -> (B,), in float32."""
        if not self.has_centre:
            raise ConfigError(
                "DeepSVDD's centre c is not set yet (training sets it from the data once pretrain_steps are "
                "done): use a checkpoint from after pretraining, or model.set_centre(initial_centre(...))"
            )
        return (self.code(x).float() - self.centre.float()).square().sum(1)

    def pretraining_error(self, x: Tensor) -> Tensor:
        """Summed squared error of the pretraining decoder's reconstruction of `x`, (B,), in float32."""
        output = self.pretraining_decoder(self.code(x)).float()
        mean = torch.tanh(output) if self.value_range == (-1.0, 1.0) else torch.sigmoid(output)
        return (mean - x.float()).square().flatten(1).sum(1)

    def loss_terms(self, batch: Batch) -> dict[str, Tensor]:
        """Pretraining: `recon`. Then the SVDD loss with `squared_distance` and, soft-boundary, `outside`
        (1 for an image outside the sphere: its mean is the fraction outside). Each (B,)."""
        if self.pretraining():
            recon = self.pretraining_error(batch.inputs)
            return {"loss": recon, "recon": recon}
        distance = self.squared_distance(batch.inputs)
        terms = {"squared_distance": distance}
        if self.objective == "one-class":
            loss = distance
        else:
            radius2 = self.radius.float().square()
            loss = radius2 + F.relu(distance - radius2) / self.nu
            terms["outside"] = (distance > radius2).float()
            if self.training and self.step >= self.pretrain_steps + self.warmup_steps:
                # the loss above used the R of the steps before, as in the authors' code
                self.radius.copy_(radius_quantile(distance.detach(), self.nu))
        if self.training and self.pretrain_steps > 0:
            # DDP wants a gradient for every parameter at every step: the unused decoder gets zeros
            loss = loss + 0.0 * sum(weight.sum() for weight in self.pretraining_decoder.parameters())
        return {"loss": loss, **terms}

    def anomaly_score(self, batch: Batch) -> Tensor:
        """||phi(x) - c||^2 (one-class) or ||phi(x) - c||^2 - R^2 (soft-boundary), (B,): deterministic."""
        distance = self.squared_distance(batch.inputs)
        if self.objective == "one-class":
            return distance
        return distance - self.radius.float().square()

    def training_metrics(self) -> dict[str, Tensor | float]:
        """Soft-boundary: the radius R."""
        return {"radius": self.radius} if self.objective == "soft-boundary" else {}


def _note_loaded_centre(model: nn.Module, incompatible_keys: Any) -> None:
    """After `load_state_dict`: whether the loaded centre is set (one look at the device, at loading only)."""
    assert isinstance(model, DeepSVDD)
    model.has_centre = bool(torch.isfinite(model.centre).all())


def radius_quantile(squared_distance: Tensor, nu: float) -> Tensor:
    """R: the (1 - nu) quantile of the distances sqrt(squared_distance) (B,), interpolated linearly between
    the two nearest as `numpy.quantile` and `torch.quantile` do (which reads q back from the device)."""
    distances = squared_distance.float().sqrt().sort().values
    position = (len(distances) - 1) * (1.0 - nu)  # known on the host: no wait for the device
    below = math.floor(position)
    above = min(below + 1, len(distances) - 1)
    return torch.lerp(distances[below], distances[above], position - below)


@torch.no_grad()
def initial_centre(
    model: DeepSVDD, batches: Iterable[Batch], sum_processes: Callable[[Tensor], Tensor] | None = None
) -> Tensor:
    """c, (latent_dim,): the mean code of every image of `batches` (all the training data), computed in eval
    mode without gradients, its entries closer to 0 than `model.centre_eps` moved to +-centre_eps (0 to +).

    `sum_processes` sums a tensor over the processes of a distributed run (a Lightning strategy's reduce), so
    that each process, given its share of the data, gets the centre of all of it."""
    was_training = model.training
    model.eval()
    try:
        total = torch.zeros(model.latent_dim, device=model.device)
        count = torch.zeros((), device=model.device)
        for batch in batches:
            codes = model.code(batch.to(model.device, model.dtype).inputs).float()
            total += codes.sum(0)
            count += len(codes)
    finally:
        model.train(was_training)
    if sum_processes is not None:
        total, count = sum_processes(total), sum_processes(count)
    if count.item() == 0:
        raise ConfigError("DeepSVDD's centre is the mean code of the training data, but it holds no images")
    centre = total / count
    eps = model.centre_eps
    return torch.where(centre.abs() < eps, torch.where(centre < 0, -eps, eps), centre)


def pretrained_encoder(path: str | Path, model: DeepSVDD) -> dict[str, Tensor]:
    """The encoder weights of the autoencoder checkpoint at `path`, checked against `model`'s encoder; a file
    that is not such a checkpoint, or whose encoder differs, is refused in one line."""
    name = f"pretrained {path}"
    if not Path(path).is_file():
        raise CheckpointError(f"{name}: no such file (give the checkpoint of a bias-free autoencoder)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)  # data only: never runs code
    except Exception as err:
        raise CheckpointError(
            f"{name} is not a checkpoint that can be read as data ({' '.join(str(err).split())[:200]})"
        ) from None
    weights = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(weights, dict):
        raise CheckpointError(f"{name} is not a checkpoint of an ae_lightning model (no 'state_dict' entry)")
    # this framework's layout (`model.encoder.*`), or the one before the torch models (`encoder.*`)
    prefix = "model.encoder." if any(key.startswith("model.encoder.") for key in weights) else "encoder."
    encoder = {key.removeprefix(prefix): value for key, value in weights.items() if key.startswith(prefix)}
    if not encoder:
        raise CheckpointError(f"{name} holds no encoder weights: give the checkpoint of an autoencoder")
    if any(key.endswith("bias") for key in encoder):
        raise ConfigError(
            f"{name} has bias terms in its encoder: pretrain the autoencoder with --model.bias false"
        )
    trained = checkpoint.get("hyper_parameters") or {}
    if "value_range" in trained and tuple(map(float, trained["value_range"])) != model.value_range:
        raise ConfigError(
            f"{name} was trained on data in {list(trained['value_range'])}, this model's is in "
            f"{list(model.value_range)}: set --data.value_range as for the autoencoder"
        )
    expected = {key: tuple(value.shape) for key, value in model.encoder.state_dict().items()}
    if expected != {key: tuple(value.shape) for key, value in encoder.items()}:
        named = ("backbone", "hidden_dims", "latent_dim")
        given = ", ".join(f"{key} {trained[key]}" for key in named if key in trained)
        raise ConfigError(
            f"{name}: its encoder ({given or 'other layers'}) differs from this model's (backbone "
            f"{model.backbone}, hidden_dims {list(model.hidden_dims)}, latent_dim {model.latent_dim}): "
            "pretrain with the same three"
        )
    return encoder
