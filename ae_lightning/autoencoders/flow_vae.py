"""VAEs with normalising-flow posteriors: planar/radial flows (Rezende & Mohamed, 2015) and inverse
autoregressive flow (Kingma et al., 2016)."""

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ae_lightning.autoencoders.flows import IAFStep, PlanarFlow, RadialFlow
from ae_lightning.autoencoders.vae import (
    LOG_2PI,
    SCORE_SAMPLES,
    VAE,
    gaussian_log_density,
    importance_chunks,
    score_noise,
)
from ae_lightning.batch import Batch
from ae_lightning.errors import ConfigError

#: the layers PlanarFlowVAE stacks, by the name its `flows` argument gives
FlowKind = Literal["planar", "radial"]
FLOW_LAYERS: dict[str, type[nn.Module]] = {"planar": PlanarFlow, "radial": RadialFlow}


class FlowVAE(VAE):
    """The base of the flow VAEs: the encoder's diagonal Gaussian q0(z0 | x) pushed through K invertible
    layers, z_K = f_K(...f_1(z0)), whose log-determinants give the density of the posterior q_K(z_K | x).

    `posterior` (and so `mu`, `logvar`) is the base distribution q0, not q_K. The loss is the one-sample
    ELBO, recon(x | z_K) + beta * kl with kl = log q0(z0 | x) - sum_k log|det_k| - log p(z_K), a Monte Carlo
    estimate of KL(q_K || p) on the same draw z0 = mu + sigma * eps (no closed form, hence no `kl_dim/<i>`);
    `log_det` is sum_k log|det_k|. `code` is z_K of eps = 0 (the flow of mu): deterministic, and what
    `latent`, the exported encoder and the active-unit count read. The prior is N(0, I): `sample` decodes
    its draws. A subclass builds the layers (`build_flows`).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.flows = nn.ModuleList(self.build_flows())

    @abstractmethod
    def build_flows(self) -> list[nn.Module]:
        """The K layers, each z (N, latent_dim) -> (z' (N, latent_dim), log|det| (N,))."""

    def flow(self, z0: Tensor) -> tuple[Tensor, Tensor]:
        """z0 (N, D) -> (z_K (N, D), sum of the layers' log|det| (N,))."""
        z, log_dets = z0, []
        for layer in self.flows:
            z, log_det = layer(z)
            log_dets.append(log_det)
        # stacked rather than added to zeros of a batch size, which a traced graph would fix
        return z, torch.stack(log_dets).sum(0)

    def flow_draws(self, mu: Tensor, logvar: Tensor, eps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Draws z0 = mu + sigma * eps pushed through the flow, for eps (..., B, D) (broadcast against mu and
        logvar (B, D)): z_K (..., B, D), the KL estimate log q0(z0) - log_det - log p(z_K) (..., B) and
        log_det (..., B), in float32 (at least) whatever the precision of the encoder."""
        dtype = torch.promote_types(mu.dtype, torch.float32)
        mu, logvar, eps = mu.to(dtype), logvar.to(dtype), eps.to(dtype)
        z0 = mu + (0.5 * logvar).exp() * eps
        z, log_det = self.flow(z0.reshape(-1, self.latent_dim))
        z, log_det = z.view(z0.shape), log_det.view(z0.shape[:-1])
        # log N(z0; mu, sigma^2) written with eps: (z0 - mu)^2 / sigma^2 is eps^2
        log_base = (-0.5 * (LOG_2PI + logvar + eps.square())).sum(-1)
        kl = log_base - log_det - gaussian_log_density(z).sum(-1)
        return z, kl, log_det

    def code(self, x: Tensor) -> Tensor:
        """z_K of the base mean, the flow of mu: (B, C, H, W) -> (B, latent_dim)."""
        mu = self.encode(x)[0]
        return self.flow(mu.to(torch.promote_types(mu.dtype, torch.float32)))[0].to(mu.dtype)

    def loss_terms(self, batch: Batch) -> dict[str, Tensor]:
        mu, logvar, decode_raw = self.posterior(batch)
        z, kl, log_det = self.flow_draws(mu, logvar, torch.randn_like(mu))
        recon = self.reconstruction_loss(decode_raw(z.to(mu.dtype)), batch.inputs)
        # as the VAE: the warm-up schedules training only, evaluation weighs the KL by beta
        weight = self.kl_weight() if self.training else self.beta
        return {"loss": recon + weight * kl, "recon": recon, "kl": kl, "log_det": log_det}

    def log_weights(
        self, batch: Batch, num_samples: int, chunk_size: int | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """log p(x | z_K) + log p(z_K) - log q_K(z_K | x) for `num_samples` flow posterior draws of each
        image: (num_samples, B); with the reconstruction terms (num_samples, B), and mu and logvar (B, D) of
        q0. The draws are decoded `chunk_size` at a time, as in `VAE.log_weights`."""
        mu, logvar, decode_raw = self.posterior(batch)

        def weigh(count: int, targets: Tensor) -> tuple[Tensor, Tensor]:
            eps = torch.randn((count, *mu.shape), dtype=mu.dtype, device=mu.device)
            z, kl, _ = self.flow_draws(mu, logvar, eps)  # (count, B, D), (count, B)
            recon = self.reconstruction_loss(decode_raw(z.flatten(0, 1).to(mu.dtype)), targets)
            recon = recon.view(count, -1)
            return -recon - kl, recon  # log q_K - log p is the KL estimate of the draw

        log_weights, recons = importance_chunks(batch.inputs, num_samples, chunk_size, weigh)
        return log_weights, recons, mu, logvar

    def anomaly_score(self, batch: Batch, num_samples: int = SCORE_SAMPLES) -> Tensor:
        """Negative ELBO of each image (beta = 1), reconstruction and KL estimate averaged over `num_samples`
        flow posterior draws of the fixed noise eps of `VAE.anomaly_score` (the same for every image), so an
        image always gets the same score: (B,)."""
        mu, logvar, decode_raw = self.posterior(batch)
        eps = self.score_noise if num_samples == SCORE_SAMPLES else score_noise(num_samples, self.latent_dim)
        z, kl, _ = self.flow_draws(mu, logvar, eps.to(mu.device)[:, None])  # (S, B, D), (S, B)
        targets = batch.inputs.repeat(num_samples, *[1] * (batch.inputs.ndim - 1))
        recon = self.reconstruction_loss(decode_raw(z.flatten(0, 1).to(mu.dtype)), targets)
        return (recon.view(num_samples, -1) + kl).mean(0)


def check_num_flows(num_flows: int) -> None:
    """Refuses fewer than one flow layer."""
    if num_flows < 1:
        raise ConfigError(
            f"num_flows must be at least 1, got {num_flows}: use VAE for a posterior without a flow"
        )


class PlanarFlowVAE(FlowVAE):
    """VAE whose posterior is the encoder's Gaussian through K planar or radial flows (Rezende & Mohamed,
    2015; pythae's VAE_LinNF). Loss terms `loss`, `recon`, `kl` (Monte Carlo estimate) and `log_det`, as in
    `FlowVAE`.

    Args:
        flows: the kind of every layer, `planar` (z + u tanh(w.z + b)) or `radial` (a contraction or
            expansion around a point); or a list of kinds, one per layer (its length must be num_flows),
            e.g. [planar, radial] with num_flows 2.
        num_flows: K, the number of flow layers (each adds 2 * latent_dim + 1 parameters).
        **kwargs: the arguments of `VAE` (beta, kl_warmup_steps, nll_samples) and `Autoencoder`.
    """

    def __init__(
        self, flows: FlowKind | Sequence[FlowKind] = "planar", num_flows: int = 10, **kwargs: Any
    ) -> None:
        check_num_flows(num_flows)
        kinds = [flows] * num_flows if isinstance(flows, str) else list(flows)
        unknown = [kind for kind in kinds if kind not in FLOW_LAYERS]
        if unknown:
            raise ConfigError(f"flows must be 'planar' or 'radial' (or a list of them), got {unknown[0]!r}")
        if len(kinds) != num_flows:
            raise ConfigError(
                f"flows lists {len(kinds)} kinds but num_flows is {num_flows}: give one kind per layer, "
                f"or set --model.num_flows {len(kinds)}"
            )
        # before the base builds the layers (`build_flows`)
        self.flow_kinds: tuple[str, ...] = tuple(kinds)
        super().__init__(**kwargs)

    def build_flows(self) -> list[nn.Module]:
        return [FLOW_LAYERS[kind](self.latent_dim) for kind in self.flow_kinds]


class IAFVAE(FlowVAE):
    """VAE whose posterior is the encoder's Gaussian through K inverse autoregressive flow steps (Kingma et
    al., 2016; pythae's VAE_IAF). Each step is a MADE giving (m, s) with the LSTM-type update z' = sigma z +
    (1 - sigma) m, sigma = sigmoid(s + 2); the autoregressive order is reversed between steps. The MADEs see
    z only: no context h from the encoder (as in pythae). Loss terms as in `FlowVAE`.

    Args:
        num_flows: K, the number of IAF steps.
        made_hidden_dims: widths of each MADE's hidden layers (at least latent_dim - 1 each, or the later
            units see only part of the earlier ones).
        **kwargs: the arguments of `VAE` (beta, kl_warmup_steps, nll_samples) and `Autoencoder`.
    """

    def __init__(self, num_flows: int = 2, made_hidden_dims: Sequence[int] = (128,), **kwargs: Any) -> None:
        check_num_flows(num_flows)
        made_hidden_dims = tuple(made_hidden_dims)
        if not made_hidden_dims or min(made_hidden_dims) < 1:
            raise ConfigError(
                f"made_hidden_dims must be one or more positive widths of the MADE's hidden layers, "
                f"got {list(made_hidden_dims)}"
            )
        # before the base builds the layers (`build_flows`)
        self.num_flows = num_flows
        self.made_hidden_dims = made_hidden_dims
        super().__init__(**kwargs)

    def build_flows(self) -> list[nn.Module]:
        return [
            IAFStep(self.latent_dim, self.made_hidden_dims, reverse=step % 2 == 1)
            for step in range(self.num_flows)
        ]
