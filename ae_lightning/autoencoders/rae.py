"""The regularised autoencoder (Ghosh et al., "From variational to deterministic autoencoders", ICLR 2020)."""

from typing import Any, Literal

import torch
from torch import Tensor

from ae_lightning.autoencoders.base import Autoencoder
from ae_lightning.batch import Batch
from ae_lightning.errors import ConfigError

Regularization = Literal["l2", "gp"]


class RAE(Autoencoder):
    """Deterministic autoencoder with the two regularisers that stand in for the VAE's noise: a penalty on the
    code's size, and one on the decoder's smoothness.

    loss = reconstruction + embedding_weight * |z|^2 / 2 + reg_weight * R, with R (`regularization`):
    `l2` the squared norm of the decoder's weights (RAE-L2: weight decay on the decoder, a batch statistic:
    every image carries the same value), or `gp` the squared norm of the gradient of the decoder's summed
    output with respect to the code (RAE-GP, the gradient the paper's code penalises; one double backward a
    step). With no prior, an RAE generates only through a density fitted on its codes afterwards (the
    samplers), so grids show reconstructions. Reports `recon`, `embedding` and `decoder_reg` (unweighted).

    Args:
        regularization: `l2` (pythae's RAE_L2) or `gp` (RAE_GP).
        embedding_weight: beta, the weight of |z|^2 / 2 (the paper and pythae: 1e-4).
        reg_weight: lambda, the weight of the decoder's regulariser (pythae: 1e-7).
        **kwargs: the arguments of `Autoencoder`.
    """

    def __init__(
        self,
        regularization: Regularization = "l2",
        embedding_weight: float = 1e-4,
        reg_weight: float = 1e-7,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if regularization not in ("l2", "gp"):
            raise ConfigError(
                f"regularization must be 'l2' (decoder weight decay) or 'gp' (gradient penalty), "
                f"got {regularization!r}"
            )
        if embedding_weight < 0 or reg_weight < 0:
            raise ConfigError(
                f"embedding_weight and reg_weight must be >= 0, got {embedding_weight} and {reg_weight}"
            )
        self.regularization: Regularization = regularization
        self.embedding_weight = embedding_weight
        self.reg_weight = reg_weight

    def code_decoding_and_penalty(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The code (B, D), the raw decoder output and R of each image (B,), in float32: the decoder's squared
        weight norm (`l2`, the same for every image) or |d sum(decode(z)) / dz|^2 at each code (`gp`, from
        the same decoder pass)."""
        if self.regularization == "l2":
            z = self.code(x)
            squared = sum(weight.float().square().sum() for weight in self.decoder.parameters())
            return z, self.decoder(z), squared.expand(z.shape[0])
        train = torch.is_grad_enabled()
        # evaluation may run under inference mode, where autograd is off: the penalty is a gradient
        with torch.inference_mode(False), torch.enable_grad():
            z = self.code(x if train else x.clone())  # a clone is an ordinary tensor under inference mode
            if not train:
                z = z.detach().requires_grad_(True)
            decoder_output = self.decoder(z)
            (gradient,) = torch.autograd.grad(
                self.output_mean(decoder_output).float().sum(), z, create_graph=train
            )
        return z, decoder_output, gradient.float().square().sum(1)

    def loss_terms(self, batch: Batch) -> dict[str, Tensor]:
        z, decoder_output, penalty = self.code_decoding_and_penalty(batch.inputs)
        recon = self.reconstruction_loss(decoder_output, batch.inputs)
        embedding = 0.5 * z.float().square().sum(1)
        loss = recon + self.embedding_weight * embedding + self.reg_weight * penalty
        return {"loss": loss, "recon": recon, "embedding": embedding, "decoder_reg": penalty}
