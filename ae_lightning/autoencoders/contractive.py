"""The contractive autoencoder (Rifai et al., 2011)."""

from typing import Any

import torch
from torch import Tensor

from ae_lightning.autoencoders.base import Autoencoder
from ae_lightning.batch import Batch
from ae_lightning.errors import ConfigError
from ae_lightning.nets import MLPEncoder


class ContractiveAE(Autoencoder):
    """Autoencoder with a penalty on the squared Frobenius norm of the encoder's Jacobian, ||dz/dx||_F^2,
    which makes the code insensitive to small changes of the input.

    For the MLP with one hidden layer (the default, 784-400-20) the penalty is exact and in closed form,
    m^T ((W2^T W2) * (W1 W1^T)) m with m the mask of active ReLU units (as Rifai et al.'s closed form for a
    sigmoid layer): one hidden x hidden matrix per step. Any other encoder (deeper MLP, conv) gets it by
    autograd: one batched backward pass over the `latent_dim` basis vectors
    (`torch.autograd.grad(..., is_grads_batched=True)`), i.e. `latent_dim` vector-Jacobian products, plus a
    double backward in training (benchmarks/README.md gives the cost of both). Reports `jacobian_penalty`
    (the unweighted norm).

    Args:
        contractive_weight: lambda, the weight of the penalty in the loss.
        **kwargs: the arguments of `Autoencoder`.
    """

    def __init__(self, contractive_weight: float = 0.1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if contractive_weight < 0:
            raise ConfigError(f"contractive_weight must be >= 0, got {contractive_weight}")
        self.contractive_weight = contractive_weight

    def code_and_jacobian_penalty(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The code (B, latent_dim) and ||dz/dx||_F^2 of each image (B,), differentiable in training."""
        if isinstance(self.encoder, MLPEncoder) and self.encoder.num_hidden_layers == 1:
            code, penalty = self.encoder.forward_and_jacobian_norm(x)
            return code, penalty.float()
        train = torch.is_grad_enabled()
        # evaluation may run under inference mode, where autograd is off: the penalty needs it back on
        with torch.inference_mode(False), torch.enable_grad():
            x = x.clone().requires_grad_(True)  # a clone is an ordinary tensor even under inference mode
            code = self.encoder(x)
            # row i of each image's Jacobian is the gradient of code[:, i]; images do not interact in the
            # encoder, so the gradient of the batch sum gives every image's own row at once
            basis = torch.eye(self.latent_dim, dtype=code.dtype, device=code.device)
            grad_outputs = basis[:, None, :].expand(-1, code.shape[0], -1)  # (latent_dim, B, latent_dim)
            (jacobian,) = torch.autograd.grad(
                code, x, grad_outputs=grad_outputs, is_grads_batched=True, create_graph=train
            )  # (latent_dim, B, C, H, W)
        penalty = jacobian.float().square().flatten(2).sum(2).sum(0)  # float32 under mixed precision
        return code, penalty

    def loss_terms(self, batch: Batch) -> dict[str, Tensor]:
        code, penalty = self.code_and_jacobian_penalty(batch.inputs)
        recon = self.reconstruction_loss(self.decoder(code), batch.inputs)
        return {
            "loss": recon + self.contractive_weight * penalty,
            "recon": recon,
            "jacobian_penalty": penalty,
        }
