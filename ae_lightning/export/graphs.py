"""What an export holds: the encoder, the decoder and the scorer of a torch model, each a module of tensors
only (no Batch, no training code), ready to be traced into ONNX or TorchScript. The encoder and the scorer of
an image model take uint8 pixels and scale them inside the graph, with the function the datamodules use."""

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ae_lightning.autoencoders import Autoencoder, Conditional, LatentModel, Localizes, Reconstructs
from ae_lightning.batch import Batch
from ae_lightning.value_range import scale_pixels


class _Part(nn.Module):
    """A view of the model for one exported graph. A conditional model takes `labels` (B,) int64 too.

    `takes_pixels`: the graph takes uint8 pixels (images) and scales them to the model's value range itself,
    thresholding them at 127 where the model was trained on binarised data (`binarized`); vectors are taken
    as they are, floats in the value range.
    """

    def __init__(self, model: LatentModel, binarized: bool = False) -> None:
        super().__init__()
        self.model = model
        self.conditional = isinstance(model, Conditional)
        self.takes_pixels = len(model.image_shape) == 3
        self.binarized = binarized

    def model_inputs(self, inputs: Tensor) -> Tensor:
        """What the model reads, from what the graph takes."""
        if not self.takes_pixels:
            return inputs
        scaled = scale_pixels(inputs, self.model.value_range, "threshold" if self.binarized else None)
        return scaled.to(self.model.dtype)

    def with_labels(self, first: Tensor, labels: Tensor | None) -> tuple[Tensor, ...]:
        return (first, labels) if self.conditional else (first,)


class EncoderGraph(_Part):
    """inputs (B, *input_shape) [, labels (B,)] -> latent (B, latent_dim); for a VAE the posterior mean."""

    def forward(self, inputs: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.model.code(*self.with_labels(self.model_inputs(inputs), labels))


class DecoderGraph(_Part):
    """latent (B, latent_dim) [, labels (B,)] -> reconstruction (B, *input_shape), the output mean."""

    def forward(self, latent: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.model.decode(*self.with_labels(latent, labels))


def gives_map(model: LatentModel) -> bool:
    """Whether the model's scorer gives an anomaly map: it localises, and its data are images."""
    return isinstance(model, Localizes) and model.localizes()


class ScorerGraph(_Part):
    """inputs [, labels] -> (anomaly_score (B,), pred_anomaly (B,) bool: score > threshold) and, for a model
    that localises (`gives_map`), anomaly_map (B, H, W) float32. Without a threshold the decision is all
    False and `model.json` says so."""

    def __init__(self, model: LatentModel, threshold: float | None, binarized: bool = False) -> None:
        super().__init__(model, binarized)
        self.maps = gives_map(model)
        self.register_buffer("threshold", torch.tensor(float("inf") if threshold is None else threshold))

    def forward(self, inputs: Tensor, labels: Tensor | None = None) -> tuple[Tensor, ...]:
        batch = Batch(self.model_inputs(inputs), labels)
        score = self.model.anomaly_score(batch).float()
        if not self.maps:
            return score, score > self.threshold
        # a second pass through the model: a map is not in general what the score is read off
        return score, score > self.threshold, self.model.anomaly_map(batch).float()


class SamplerGraph(nn.Module):
    """noise (B, noise_size), independent N(0, 1) numbers -> latent (B, latent_dim): a post-hoc sampler's
    draw (`Sampler.codes_from_noise`), for the decoder graph to turn into images."""

    def __init__(self, sampler: nn.Module, model: Autoencoder) -> None:
        super().__init__()
        self.sampler, self.model = sampler, model

    def forward(self, noise: Tensor) -> Tensor:
        return self.sampler.codes_from_noise(self.model, noise).float()


def graph_names(model: LatentModel) -> dict[str, tuple[list[str], list[str]]]:
    """The names of each graph's inputs (before a conditional model's `labels`) and outputs: the scorer of a
    model that localises gives `anomaly_map` too."""
    scores = ["anomaly_score", "pred_anomaly", *(["anomaly_map"] if gives_map(model) else [])]
    return {
        "encoder": (["inputs"], ["latent"]),
        "decoder": (["latent"], ["reconstruction"]),
        "scorer": (["inputs"], scores),
    }


@dataclass
class Graph:
    """One graph to export: its module, example inputs and the names of its inputs and outputs."""

    module: nn.Module
    inputs: tuple[Tensor, ...]
    input_names: list[str]
    output_names: list[str]


def graphs(
    model: LatentModel, threshold: float | None, batch: int = 2, binarized: bool = False
) -> dict[str, Graph]:
    """The encoder, decoder (for a model that reconstructs) and scorer of `model` (in eval mode), with example
    inputs of `batch` items."""
    model.eval()
    if len(model.image_shape) == 3:
        inputs = torch.zeros(batch, *model.image_shape, dtype=torch.uint8, device=model.device)
    else:
        inputs = torch.zeros(batch, *model.image_shape, dtype=model.dtype, device=model.device)
    latent = torch.zeros(batch, model.latent_dim, dtype=model.dtype, device=model.device)
    labels = (
        (torch.zeros(batch, dtype=torch.int64, device=model.device),)
        if isinstance(model, Conditional)
        else ()
    )
    label_names = ["labels"] if labels else []
    modules = {
        "encoder": (EncoderGraph(model, binarized), inputs),
        "decoder": (DecoderGraph(model), latent),
        "scorer": (ScorerGraph(model, threshold, binarized), inputs),
    }
    if not isinstance(model, Reconstructs):  # nothing to decode with
        del modules["decoder"]
    names = graph_names(model)
    return {
        name: Graph(module, (first, *labels), [*names[name][0], *label_names], names[name][1])
        for name, (module, first) in modules.items()
    }
