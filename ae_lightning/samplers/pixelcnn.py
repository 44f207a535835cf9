"""An autoregressive prior over a discrete code, fitted by maximum likelihood on the training images' codes:
how a VQ-VAE generates (van den Oord, Vinyals & Kavukcuoglu, 2017, who fit a PixelCNN over the codes;
pythae's PixelCNNSampler). Our codes are a sequence of codebook indices per image, so the PixelCNN is 1-D."""

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ae_lightning.autoencoders import Autoencoder, Conditional, DiscreteCode, Reconstructs
from ae_lightning.errors import ConfigError
from ae_lightning.nets.sampling import standard_normal
from ae_lightning.samplers.base import Progress, Sampler, where_codes_live

#: the smallest exponential draw kept, so that a Gumbel draw -log(draw) is finite
TINY = torch.finfo(torch.float32).tiny


class MaskedConv1d(nn.Conv1d):
    """A 1-D convolution whose output at position i sees the inputs before i only (type A, the first layer)
    or those and position i (type B, the layers after): (B, C_in, L) -> (B, C_out, L)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, sees_own: bool) -> None:
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        mask = torch.ones(kernel_size)
        mask[kernel_size // 2 + int(sees_own) :] = 0  # the taps on later positions (and, type A, its own)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """The convolution with the masked taps zeroed, (B, C_in, L) -> (B, C_out, L)."""
        return F.conv1d(x, self.weight * self.mask, self.bias, padding=self.padding)


def gated(h: Tensor) -> Tensor:
    """tanh(a) * sigmoid(b) of the two halves of the channels (the gated PixelCNN's unit): (B, 2C, L) ->
    (B, C, L)."""
    filters, gates = h.chunk(2, 1)
    return torch.tanh(filters) * torch.sigmoid(gates)


class GatedLayer(nn.Module):
    """A residual gated type-B layer: h + W gated(masked conv(h)), (B, C, L) -> (B, C, L)."""

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = MaskedConv1d(channels, 2 * channels, kernel_size, sees_own=True)
        self.out = nn.Conv1d(channels, channels, 1)

    def forward(self, h: Tensor) -> Tensor:
        """(B, C, L) -> (B, C, L)."""
        return h + self.out(gated(self.conv(h)))


class PixelCNN1d(nn.Module):
    """Logits of p(x_i | x_<i) for every position of sequences of indices: embeddings, a gated type-A masked
    convolution plus a learnt bias per position (position i of a code is its own part of the latent vector,
    with its own distribution), `num_layers - 1` residual gated type-B layers, and a 1x1 head. Position i sees
    the (kernel_size // 2) * num_layers positions before it. (B, L) int64 -> (B, vocabulary, L)."""

    def __init__(
        self,
        vocabulary: int,
        length: int,
        embedding_dim: int,
        channels: int,
        num_layers: int,
        kernel_size: int,
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocabulary, embedding_dim)
        self.first = MaskedConv1d(embedding_dim, 2 * channels, kernel_size, sees_own=False)
        self.position = nn.Parameter(torch.zeros(2 * channels, length))
        self.layers = nn.Sequential(*(GatedLayer(channels, kernel_size) for _ in range(num_layers - 1)))
        self.head = nn.Sequential(
            nn.ReLU(), nn.Conv1d(channels, channels, 1), nn.ReLU(), nn.Conv1d(channels, vocabulary, 1)
        )

    def forward(self, indices: Tensor) -> Tensor:
        """Indices (B, L) int64 -> logits (B, vocabulary, L), those at i from the indices before i only."""
        h = gated(self.first(self.embedding(indices).transpose(1, 2)) + self.position)
        return self.head(self.layers(h))


class PixelCNNSampler(Sampler):
    """Draws a discrete model's codebook indices from a PixelCNN fitted to those of the training images, and
    decodes their code (`DiscreteCode.code_of`).

    A code is the sequence of `code_length` indices `codes` gives, modelled as p(x) = prod_i p(x_i | x_<i),
    each factor a softmax over the values seen at position i in the training codes (a value never seen there
    has probability 0, in the fit and in the draws). For an HRQVAE the sequence runs vector by vector, coarse
    level to fine within a vector, so each choice is made knowing the coarser ones; position i holds level
    (i mod num_levels)'s entries only, which the values seen there enforce.

    It is fitted by cross-entropy with Adam, from weights set by `seed`, on minibatches shuffled by `seed`,
    the learning rate decaying from `lr` to 0 along a cosine over the fit (pythae's trainer keeps it
    constant: the decay lets the last steps average out the minibatch noise, which a constant rate leaves in
    the fitted probabilities). It is drawn position by position on the sampler's device by the Gumbel-max
    trick, the noise drawn at once (from a CPU generator, repeatably).

    Args:
        latent_dim: size of the model's codes.
        codebook_size: the values an index takes (the model's `codebook_size`; `for_model` sets it).
        code_length: indices per image (the model's `code_length`; `for_model` sets it).
        embedding_dim: size of each index's embedding.
        channels: channels of the convolutions (pythae: 64).
        num_layers: masked convolutions, the first type A (pythae: 10).
        kernel_size: odd width of each convolution, centred on its position (pythae: 5).
        epochs: passes over the training codes (pythae's trainer: 100).
        batch_size: codes per optimizer step (pythae's trainer: 64).
        lr: Adam's learning rate (pythae's trainer: 1e-4).
        seed: seeds the initial weights and the order of the minibatches.
    """

    name = "pixelcnn"
    fitted = True

    def __init__(
        self,
        latent_dim: int,
        codebook_size: int,
        code_length: int,
        embedding_dim: int = 64,
        channels: int = 64,
        num_layers: int = 10,
        kernel_size: int = 5,
        epochs: int = 100,
        batch_size: int = 64,
        lr: float = 1e-4,
        seed: int = 0,
    ) -> None:
        super().__init__(latent_dim)
        if codebook_size < 2 or code_length < 1:
            raise ConfigError(
                "pixelcnn needs codebook_size >= 2 and code_length >= 1 (the model's: build it with "
                f"PixelCNNSampler.for_model), got {codebook_size} and {code_length}"
            )
        sizes = {"embedding_dim": embedding_dim, "channels": channels, "num_layers": num_layers}
        sizes |= {"epochs": epochs, "batch_size": batch_size}
        small = [f"{name}={value}" for name, value in sizes.items() if value < 1]
        if small:
            raise ConfigError(f"pixelcnn needs {', '.join(sizes)} at least 1, got {', '.join(small)}")
        if kernel_size < 3 or kernel_size % 2 == 0:
            raise ConfigError(
                f"pixelcnn needs an odd kernel_size >= 3 (centred on its position), got {kernel_size}"
            )
        if not lr > 0:
            raise ConfigError(f"pixelcnn needs lr > 0 (Adam's learning rate), got {lr}")
        self.codebook_size, self.code_length = codebook_size, code_length
        self.embedding_dim, self.channels, self.num_layers = embedding_dim, channels, num_layers
        self.kernel_size, self.epochs, self.batch_size = kernel_size, epochs, batch_size
        self.lr, self.seed = lr, seed
        self.network = self._network()
        #: which values each position takes, (code_length, codebook_size): every one until `fit`
        self.register_buffer("support", torch.ones(code_length, codebook_size, dtype=torch.bool))
        #: -log p(code) of a training code, averaged, in nats, at the end of the fit
        self.negative_log_likelihood: float | None = None

    @classmethod
    def for_model(cls, model: Autoencoder, **options: Any) -> "PixelCNNSampler":
        """The sampler for `model`'s codes (refused by `refusal`'s reason as a ValueError: check it first)."""
        reason = cls.refusal(model)
        if reason is not None:
            raise ValueError(reason)
        assert isinstance(model, DiscreteCode)
        # the model's sizes (a saved fit's options hold them too: the same numbers for the same model)
        sizes = {"codebook_size": model.codebook_size, "code_length": model.code_length}
        for name, size in sizes.items():
            if options.get(name, size) != size:
                raise ConfigError(
                    f"pixelcnn: {name} is the model's ({size}), got {options[name]}: leave it out"
                )
        return cls(latent_dim=model.latent_dim, **{**options, **sizes})

    @classmethod
    def refusal(cls, model: Autoencoder) -> str | None:
        name = type(model).__name__
        if not isinstance(model, DiscreteCode):
            return f"pixelcnn draws codebook indices; {name}'s codes are {where_codes_live(model)}"
        if not isinstance(model, Reconstructs):
            return f"{name} has no decoder to turn codes into images"
        if isinstance(model, Conditional):
            return f"{name} decodes with a label: the pixelcnn sampler draws codes only"
        return None

    def options(self) -> dict[str, Any]:
        return {
            "codebook_size": self.codebook_size,
            "code_length": self.code_length,
            "embedding_dim": self.embedding_dim,
            "channels": self.channels,
            "num_layers": self.num_layers,
            "kernel_size": self.kernel_size,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "seed": self.seed,
        }

    def _network(self) -> PixelCNN1d:
        """A PixelCNN with initial weights set by `seed` (the global random state is left alone)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return PixelCNN1d(
                self.codebook_size,
                self.code_length,
                self.embedding_dim,
                self.channels,
                self.num_layers,
                self.kernel_size,
            )

    def encode(self, model: Autoencoder, inputs: Tensor) -> Tensor:
        """The codebook indices of a batch of images, (B, code_length) int64."""
        assert isinstance(model, DiscreteCode)
        return model.codes(inputs)

    def log_conditionals(self, indices: Tensor) -> Tensor:
        """log p(x_i = v | x_<i) for every position i and value v, (B, code_length) -> (B, codebook_size,
        code_length), float32 (-inf at values never seen at a position)."""
        with torch.autocast(indices.device.type, enabled=False):
            logits = self.network(indices).float()
            return logits.masked_fill(~self.support.T, float("-inf")).log_softmax(1)

    def log_prob(self, indices: Tensor) -> Tensor:
        """log p(x) of sequences of indices, (B, code_length) -> (B,)."""
        return self.log_conditionals(indices).gather(1, indices[:, None]).sum((1, 2))

    def fit(self, codes: Tensor, progress: Progress | None = None) -> None:
        indices = codes.ndim == 2 and codes.shape[1] == self.code_length and not codes.is_floating_point()
        if not indices or not len(codes):
            shape = tuple(codes.shape)
            raise ConfigError(
                f"pixelcnn fits codebook indices (N, {self.code_length}), got {codes.dtype} {shape}"
            )
        if int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size:  # once per fit: a wait is fine
            raise ConfigError(f"pixelcnn fits indices in [0, {self.codebook_size}): these codes lie outside")
        device = codes.device
        with torch.inference_mode(False), torch.enable_grad():
            codes = codes.long().clone()  # an ordinary tensor (not an inference one), which autograd can save
            self.network = self._network().to(device)
            support = torch.zeros(self.code_length, self.codebook_size, dtype=torch.bool, device=device)
            self.support = support.scatter_(1, codes.T, True)
            optimizer = torch.optim.Adam(self.network.parameters(), lr=self.lr)
            generator = torch.Generator().manual_seed(self.seed)
            steps = self.epochs * -(-len(codes) // self.batch_size)
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
            for epoch in range(1, self.epochs + 1):
                order = torch.randperm(len(codes), generator=generator).to(device)
                for start in range(0, len(codes), self.batch_size):
                    batch = codes[order[start : start + self.batch_size]]
                    # the mean over positions and codes of -log p(x_i | x_<i): maximum likelihood
                    loss = F.nll_loss(self.log_conditionals(batch), batch)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    schedule.step()
                if progress is not None:
                    progress(epoch, self.epochs)
        with torch.no_grad():
            total = sum(-self.log_prob(chunk).sum() for chunk in codes.split(max(self.batch_size, 1024)))
        self.negative_log_likelihood = float(total) / len(codes)

    def noise_size(self) -> int:
        return self.code_length * self.codebook_size

    @torch.no_grad()
    def indices_from_noise(self, noise: Tensor) -> Tensor:
        """N(0, 1) noise (B, code_length x codebook_size) -> a draw of the fitted PixelCNN, (B, code_length)
        int64: each number made a Gumbel variable (its normal CDF, a uniform u, gives -log(-log u)), and the
        value at position i the argmax of log p(x_i | x_<i) plus its position's Gumbel noise (the Gumbel-max
        trick), one pass of the network per position, no wait for the device."""
        uniform = 0.5 * (1 + torch.erf(noise.float() / math.sqrt(2)))
        uniform = uniform.clamp(TINY, 1 - 1e-7).view(-1, self.code_length, self.codebook_size)
        gumbel = -(-uniform.log()).log()
        drawn: list[Tensor] = []
        blank = torch.zeros(noise.shape[0], self.code_length, dtype=torch.long, device=noise.device)
        for position in range(self.code_length):
            # position i's conditional depends on the indices before it only: those drawn already
            indices = torch.cat([torch.stack(drawn, 1), blank[:, position:]], 1) if drawn else blank
            log_probs = self.log_conditionals(indices)[:, :, position]
            drawn.append((log_probs + gumbel[:, position]).argmax(1))
        return torch.stack(drawn, 1)

    def sample_indices(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """`num_samples` sequences of indices drawn from the fitted PixelCNN, (num_samples, code_length)
        int64 on the sampler's device (`generator`, a CPU generator, makes them repeatable)."""
        shape = (num_samples, self.noise_size())
        return self.indices_from_noise(standard_normal(shape, generator, self.support.device, torch.float32))

    def codes_from_noise(self, model: Autoencoder, noise: Tensor) -> Tensor:
        assert isinstance(model, DiscreteCode)
        indices = self.indices_from_noise(noise.to(self.support.device))
        return model.code_of(indices.to(model.device)).float()
