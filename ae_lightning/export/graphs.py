"""What an export holds: the encoder, the decoder and the scorer of a torch model, each a module of tensors
only (no Batch, no training code), ready to be traced into ONNX or TorchScript."""

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ae_lightning.autoencoders import Autoencoder, Conditional
from ae_lightning.batch import Batch


class _Part(nn.Module):
    """A view of the model for one exported graph. A conditional model takes `labels` (B,) int64 too."""

    def __init__(self, model: Autoencoder) -> None:
        super().__init__()
        self.model = model
        self.conditional = isinstance(model, Conditional)

    def inputs(self, first: Tensor, labels: Tensor | None) -> tuple[Tensor, ...]:
        return (first, labels) if self.conditional else (first,)


class EncoderGraph(_Part):
    """images (B, *input_shape) [, labels (B,)] -> code (B, latent_dim); for a VAE the posterior mean."""

    def forward(self, images: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.model.code(*self.inputs(images, labels))


class DecoderGraph(_Part):
    """code (B, latent_dim) [, labels (B,)] -> reconstruction (B, *input_shape), the output mean."""

    def forward(self, code: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.model.decode(*self.inputs(code, labels))


class ScorerGraph(_Part):
    """images [, labels] -> (anomaly score (B,), is_anomaly (B,) bool: score > threshold). Without a
    threshold the decision is all False and `model.json` says so."""

    def __init__(self, model: Autoencoder, threshold: float | None) -> None:
        super().__init__(model)
        self.register_buffer("threshold", torch.tensor(float("inf") if threshold is None else threshold))

    def forward(self, images: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        score = self.model.anomaly_score(Batch(images, labels)).float()
        return score, score > self.threshold


@dataclass
class Graph:
    """One graph to export: its module, example inputs and the names of its inputs and outputs."""

    module: nn.Module
    inputs: tuple[Tensor, ...]
    input_names: list[str]
    output_names: list[str]


def graphs(model: Autoencoder, threshold: float | None, batch: int = 2) -> dict[str, Graph]:
    """The encoder, decoder and scorer of `model` (in eval mode), with example inputs of `batch` items."""
    model.eval()
    images = torch.zeros(batch, *model.image_shape, dtype=model.dtype, device=model.device)
    code = torch.zeros(batch, model.latent_dim, dtype=model.dtype, device=model.device)
    labels = (
        (torch.zeros(batch, dtype=torch.int64, device=model.device),)
        if isinstance(model, Conditional)
        else ()
    )
    label_names = ["labels"] if labels else []
    return {
        "encoder": Graph(EncoderGraph(model), (images, *labels), ["images", *label_names], ["code"]),
        "decoder": Graph(DecoderGraph(model), (code, *labels), ["code", *label_names], ["reconstruction"]),
        "scorer": Graph(
            ScorerGraph(model, threshold),
            (images, *labels),
            ["images", *label_names],
            ["score", "is_anomaly"],
        ),
    }
