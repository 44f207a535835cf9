"""Normalising flows fitted by maximum likelihood to the training codes (pythae's MAFSampler and IAFSampler):
a masked autoregressive flow (Papamakarios et al., NeurIPS 2017) and an inverse autoregressive flow (Kingma et
al., NeurIPS 2016) used as a density model, both a stack of MADE blocks (Germain et al., ICML 2015).

Each block is an affine autoregressive map read by one MADE: (m, s) = MADE(.), with output i a function of
the units before i in the block's order (orders alternate between blocks). The MAF maps a code x to noise u
by u = (x - m(x)) exp(-s(x)), in one pass, so its density is one pass and a sample needs D passes, a unit at
a time; the IAF maps noise to a code by x = u exp(s(u)) + m(u), so a sample is one pass and the density
needs D passes. Both work on standardised codes, and p(code) = N(u; 0, I) |det du/dcode|.
"""

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ae_lightning.autoencoders import Autoencoder
from ae_lightning.autoencoders.flows import MADE
from ae_lightning.autoencoders.vae import gaussian_log_density
from ae_lightning.errors import ConfigError
from ae_lightning.samplers.base import Progress, Sampler
from ae_lightning.samplers.fitting import MinibatchFitted, fit_by_minibatches, seeded_reset, standardisation

#: each block's log-scale is squashed softly into +-LOG_SCALE_BOUND (s -> b tanh(s / b)): an early large
#: output cannot overflow exp, and standardised codes need scales far inside e^+-5 per block
LOG_SCALE_BOUND = 5.0


class AutoregressiveFlowSampler(Sampler, MinibatchFitted):
    """What the MAF and IAF samplers share: `num_blocks` MADE blocks with alternating orders on standardised
    codes (the codes' mean and standard deviation are buffers), fitted by Adam on the negative
    log-likelihood of shuffled minibatches; the initialisation and the shuffling are drawn from `seed`.

    The architecture's defaults are pythae's MAFSamplerConfig / IAFSamplerConfig (2 blocks, 3 hidden layers
    of 128), the fit's are not its trainer's (100 epochs of batches of 64 at lr 1e-4: some 94,000 Adam steps
    on 60,000 codes) but batches of 256 at lr 1e-3 for a few epochs (each flow's `default_epochs`): a fit
    that a CPU runs in minutes, not hours.

    Args:
        latent_dim: size of the codes, D.
        num_blocks: the MADE blocks, each one affine autoregressive map.
        hidden_dims: the widths of every MADE's hidden layers.
        epochs: passes over the codes.
        batch_size: codes per Adam step.
        learning_rate: Adam's.
        seed: draws the initial weights and the order of the codes in each epoch.
    """

    fitted = True
    #: the default of `epochs`, per flow: an IAF's density (its training objective) takes D passes
    default_epochs = 0

    def __init__(
        self,
        latent_dim: int,
        num_blocks: int = 2,
        hidden_dims: Sequence[int] = (128, 128, 128),
        epochs: int | None = None,
        batch_size: int = 256,
        learning_rate: float = 1e-3,
        seed: int = 0,
    ) -> None:
        super().__init__(latent_dim)
        if isinstance(hidden_dims, int | str):
            raise ConfigError(f"{self.name} needs hidden_dims as a list of widths, got {hidden_dims!r}")
        hidden_dims = [int(width) for width in hidden_dims]
        if num_blocks < 1 or any(width < 1 for width in hidden_dims):
            raise ConfigError(
                f"{self.name} needs num_blocks >= 1 and positive hidden_dims, got {num_blocks}, {hidden_dims}"
            )
        epochs = self.default_epochs if epochs is None else epochs
        self.set_fit_options(epochs, batch_size, learning_rate, seed)
        self.num_blocks, self.hidden_dims = num_blocks, hidden_dims
        self.blocks = nn.ModuleList(
            MADE(latent_dim, hidden_dims, reverse=index % 2 == 1) for index in range(num_blocks)
        )
        #: the mean log-likelihood per code (in the codes' units) over the last epoch of the fit
        self.log_likelihood: float | None = None
        self.initialise(torch.Generator().manual_seed(seed))

    def options(self) -> dict[str, Any]:
        return {"num_blocks": self.num_blocks, "hidden_dims": list(self.hidden_dims), **self.fit_options()}

    @torch.no_grad()
    def initialise(self, generator: torch.Generator) -> None:
        """Draws the MADEs' weights from `generator`, with each last layer zero: every block starts as the
        identity, the flow as N(0, I) on the standardised codes, a good start for them."""
        seeded_reset(self.blocks, generator)
        for block in self.blocks:
            output = block.net[-1]
            assert isinstance(output, nn.Linear)
            output.weight.zero_()
            output.bias.zero_()

    def affine(self, block: nn.Module, z: Tensor) -> tuple[Tensor, Tensor]:
        """The shift m and the (softly bounded) log-scale s the block reads from z: (B, D) -> 2 x (B, D)."""
        shift, log_scale = block(z)
        return shift, LOG_SCALE_BOUND * torch.tanh(log_scale / LOG_SCALE_BOUND)

    @abstractmethod
    def to_noise(self, standard: Tensor) -> tuple[Tensor, Tensor]:
        """Standardised codes (B, D) -> (noise u (B, D), log|det du/dcode| (B,))."""

    @abstractmethod
    def to_codes(self, noise: Tensor) -> Tensor:
        """Noise u (B, D) -> the standardised codes it maps to, (B, D)."""

    def log_density(self, codes: Tensor) -> Tensor:
        """log p(code) under the flow, in the codes' units: (N, D) -> (N,)."""
        noise, log_det = self.to_noise((codes.to(self.mean.dtype) - self.mean) / self.std)
        return gaussian_log_density(noise).sum(1) + log_det - self.std.log().sum()

    def fit(self, codes: Tensor, progress: Progress | None = None) -> None:
        codes = codes.detach().flatten(1).to(self.mean.device, self.mean.dtype)
        if codes.shape[0] < 2:
            raise ConfigError(f"{self.name} needs at least 2 codes to fit, got {codes.shape[0]}")
        self.mean, self.std = standardisation(codes)
        generator = torch.Generator(codes.device).manual_seed(self.seed)
        self.initialise(generator)
        standard = (codes - self.mean) / self.std

        def negative_log_likelihood(batch: Tensor) -> Tensor:
            noise, log_det = self.to_noise(batch)
            return -(gaussian_log_density(noise).sum(1) + log_det)

        mean_loss = fit_by_minibatches(
            self,
            negative_log_likelihood,
            standard,
            self.epochs,
            self.batch_size,
            self.learning_rate,
            generator,
            progress,
            self.name,
        )
        # the last epoch's, rather than another pass over the codes (D passes a block for the IAF)
        self.log_likelihood = -mean_loss - float(self.std.double().log().sum())

    @torch.no_grad()
    def noise_size(self) -> int:
        return self.latent_dim

    def codes_from_noise(self, model: Autoencoder, noise: Tensor) -> Tensor:
        return self.to_codes(noise.to(self.mean.dtype)) * self.std + self.mean


class MAFSampler(AutoregressiveFlowSampler):
    """A masked autoregressive flow (Papamakarios et al., 2017) fitted to the codes: u = (x - m(x)) exp(-s(x))
    per block, so the density (and the fit) is one pass per block and a sample D passes per block.

    Takes the arguments of `AutoregressiveFlowSampler`; `epochs` defaults to 30.
    """

    name = "maf"
    default_epochs = 30

    def to_noise(self, standard: Tensor) -> tuple[Tensor, Tensor]:
        x, log_det = standard, standard.new_zeros(standard.shape[0])
        for block in self.blocks:
            shift, log_scale = self.affine(block, x)
            x = (x - shift) * torch.exp(-log_scale)
            log_det = log_det - log_scale.sum(1)
        return x, log_det

    def to_codes(self, noise: Tensor) -> Tensor:
        u = noise
        for block in reversed(self.blocks):
            # x = u exp(s(x)) + m(x): m_i, s_i read only the units before i, so after pass t the first t
            # units (in the block's order) are exact, and D passes solve it from any start
            x = torch.zeros_like(u)
            for _ in range(self.latent_dim):
                shift, log_scale = self.affine(block, x)
                x = u * torch.exp(log_scale) + shift
            u = x
        return u


class IAFSampler(AutoregressiveFlowSampler):
    """An inverse autoregressive flow (Kingma et al., 2016) fitted to the codes by maximum likelihood, as
    pythae's IAFSampler: x = u exp(s(u)) + m(u) per block, so a sample is one pass per block and the density
    (and so every step of the fit) D passes per block, a unit at a time.

    Takes the arguments of `AutoregressiveFlowSampler`; `epochs` defaults to 3 (each costs about D times an
    epoch of the MAF).
    """

    name = "iaf"
    default_epochs = 3

    def to_noise(self, standard: Tensor) -> tuple[Tensor, Tensor]:
        x, log_det = standard, standard.new_zeros(standard.shape[0])
        for block in reversed(self.blocks):
            # u = (x - m(u)) exp(-s(u)), solved a unit at a time as the MAF's sample is; the last pass's s
            # is s(u) of the solution, as s_i reads only the units before i, exact after D - 1 passes
            u = torch.zeros_like(x)
            for _ in range(self.latent_dim):
                shift, log_scale = self.affine(block, u)
                u = (x - shift) * torch.exp(-log_scale)
            log_det = log_det - log_scale.sum(1)
            x = u
        return x, log_det

    def to_codes(self, noise: Tensor) -> Tensor:
        u = noise
        for block in self.blocks:
            shift, log_scale = self.affine(block, u)
            u = u * torch.exp(log_scale) + shift
        return u
