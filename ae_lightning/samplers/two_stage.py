"""The two-stage VAE's sampler (Dai & Wipf, ICLR 2019, "Diagnosing and enhancing VAE models"; pythae's
TwoStageVAESampler): a second VAE fitted to the first model's codes, whose prior draws it decodes into codes
for the first model's decoder."""

import math
from typing import Any

import torch
from torch import Tensor, nn

from ae_lightning.autoencoders import Autoencoder
from ae_lightning.autoencoders.vae import gaussian_kl, gaussian_log_density
from ae_lightning.errors import ConfigError
from ae_lightning.samplers.base import Progress, Sampler
from ae_lightning.samplers.fitting import MinibatchFitted, fit_by_minibatches, seeded_reset, standardisation


class SkipMLP(nn.Module):
    """`depth` ReLU layers of `width`, then a linear layer that reads their output beside the input (the skip
    of the authors' second stage): (B, inputs) -> (B, outputs)."""

    def __init__(self, inputs: int, width: int, depth: int, outputs: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for index in range(depth):
            layers += [nn.Linear(inputs if index == 0 else width, width), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(inputs + (width if depth else 0), outputs)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.cat([x, self.body(x)], dim=-1))


class TwoStageSampler(Sampler, MinibatchFitted):
    """A second VAE on the standardised codes z (D): an MLP encoder q(u|z) = N(mu(z), diag(exp(logvar(z))))
    of u (second_latent_dim), an MLP decoder p(z|u) = N(z_hat(u), gamma^2 I) whose gamma (one number) is
    learnt, and the prior N(0, I). Learning gamma is the paper's point: as the second VAE fits, gamma falls,
    and its aggregate posterior of u comes close to N(0, I) (section 4), so a draw of its generative model,
    z = z_hat(u) + gamma eps with u and eps from N(0, I) (as the authors' code draws, and pythae), falls
    where the first model's codes are. Minimised: the negative ELBO
    sum_d [(z_d - z_hat_d)^2 / (2 gamma^2) + log gamma + log(2 pi) / 2] + KL(q(u|z) || N(0, I)) per code, by
    Adam on shuffled minibatches; the initialisation, the order and the posterior draws come from `seed`.

    The codes are standardised (their mean and standard deviation are buffers): the paper's first stage is
    a VAE, whose codes are near N(0, I) already, but an AE's codes can have any scale, and gamma starts at 1.

    It is fitted on `encode`'s codes, the model's deterministic ones (a VAE's posterior means; the authors'
    code draws each epoch's codes from the posterior). pythae's defaults are 2 ReLU layers of 1024 (the
    paper's 3 of 1024) and 100 epochs (the paper's 800) of batches of 64 at lr 1e-4; these (2 of 256, 30
    epochs of 256 at lr 1e-3) take some 50 times fewer multiplications: a fit a CPU runs in minutes.

    Args:
        latent_dim: size of the first model's codes, D.
        hidden_dim: width of the encoder's and decoder's hidden layers.
        depth: their hidden layers.
        second_latent_dim: size of u (None: D, as the paper's second stage).
        epochs: passes over the codes.
        batch_size: codes per Adam step.
        learning_rate: Adam's.
        seed: draws the initial weights, the order of the codes in each epoch and the posterior draws.
    """

    name = "two_stage"
    fitted = True

    def __init__(
        self,
        latent_dim: int,
        hidden_dim: int = 256,
        depth: int = 2,
        second_latent_dim: int | None = None,
        epochs: int = 30,
        batch_size: int = 256,
        learning_rate: float = 1e-3,
        seed: int = 0,
    ) -> None:
        super().__init__(latent_dim)
        second_latent_dim = latent_dim if second_latent_dim is None else second_latent_dim
        if hidden_dim < 1 or depth < 0 or second_latent_dim < 1:
            raise ConfigError(
                f"two_stage needs hidden_dim >= 1, depth >= 0 and second_latent_dim >= 1, got {hidden_dim}, "
                f"{depth}, {second_latent_dim}"
            )
        self.set_fit_options(epochs, batch_size, learning_rate, seed)
        self.hidden_dim, self.depth, self.second_latent_dim = hidden_dim, depth, second_latent_dim
        self.encoder = SkipMLP(latent_dim, hidden_dim, depth, 2 * second_latent_dim)
        self.decoder = SkipMLP(second_latent_dim, hidden_dim, depth, latent_dim)
        #: log gamma, the log standard deviation of p(z|u) on the standardised codes
        self.log_gamma = nn.Parameter(torch.zeros(()))
        #: the mean negative ELBO per code (in the codes' units) over the last epoch of the fit
        self.loss: float | None = None
        self.initialise(torch.Generator().manual_seed(seed))

    def options(self) -> dict[str, Any]:
        return {
            "hidden_dim": self.hidden_dim,
            "depth": self.depth,
            "second_latent_dim": self.second_latent_dim,
            **self.fit_options(),
        }

    @torch.no_grad()
    def initialise(self, generator: torch.Generator) -> None:
        """Draws the networks' weights from `generator`; gamma starts at 1 (the codes' standard deviation)."""
        seeded_reset(self, generator)
        self.log_gamma.zero_()

    def posterior(self, standard: Tensor) -> tuple[Tensor, Tensor]:
        """q(u|z) of standardised codes: (B, D) -> (mu, logvar), each (B, second_latent_dim)."""
        mu, logvar = self.encoder(standard).chunk(2, dim=-1)
        return mu, logvar

    def negative_elbo(self, standard: Tensor, noise: Tensor) -> Tensor:
        """The second VAE's loss of standardised codes (B, D), u drawn with `noise` (B, second_latent_dim):
        (B,)."""
        mu, logvar = self.posterior(standard)
        u = mu + (0.5 * logvar).exp() * noise
        reconstruction = -gaussian_log_density(standard, self.decoder(u), 2 * self.log_gamma).sum(1)
        return reconstruction + gaussian_kl(mu, logvar)

    def fit(self, codes: Tensor, progress: Progress | None = None) -> None:
        codes = codes.detach().flatten(1).to(self.mean.device, self.mean.dtype)
        if codes.shape[0] < 2:
            raise ConfigError(f"two_stage needs at least 2 codes to fit, got {codes.shape[0]}")
        self.mean, self.std = standardisation(codes)
        generator = torch.Generator(codes.device).manual_seed(self.seed)
        self.initialise(generator)
        shape = (self.second_latent_dim,)

        def batch_loss(batch: Tensor) -> Tensor:
            noise = torch.randn((batch.shape[0], *shape), generator=generator, device=batch.device)
            return self.negative_elbo(batch, noise.to(batch.dtype))

        standard = (codes - self.mean) / self.std
        args = (self.epochs, self.batch_size, self.learning_rate, generator, progress, self.name)
        mean_loss = fit_by_minibatches(self, batch_loss, standard, *args)
        self.loss = mean_loss + float(self.std.double().log().sum())

    @property
    def gamma(self) -> float:
        """The decoder's standard deviation, in units of the codes' standard deviations."""
        return math.exp(float(self.log_gamma.detach()))

    @torch.no_grad()
    def noise_size(self) -> int:
        return self.second_latent_dim + self.latent_dim

    def codes_from_noise(self, model: Autoencoder, noise: Tensor) -> Tensor:
        u, scatter = noise.to(self.mean.dtype).split([self.second_latent_dim, self.latent_dim], dim=1)
        return (self.decoder(u) + self.log_gamma.exp() * scatter) * self.std + self.mean
