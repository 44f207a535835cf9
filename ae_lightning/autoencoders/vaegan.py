"""VAE/GAN (Larsen, Sønderby, Larochelle & Winther, "Autoencoding beyond pixels using a learned similarity
metric", ICML 2016): a VAE whose reconstruction error is measured in the features of a GAN discriminator."""

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ae_lightning.autoencoders.interface import OptimizedPart, SeveralOptimizers
from ae_lightning.autoencoders.vae import VAE, reparameterize
from ae_lightning.batch import Batch
from ae_lightning.errors import ConfigError
from ae_lightning.nets import Backbone, build_encoder

GeneratorLoss = Literal["non_saturating", "minimax"]


class Discriminator(nn.Module):
    """Dis: images (B, *image_shape) -> (Dis_l, the features of its last hidden layer (B, feature_size),
    the logit of "real" (B,)). Dis_l is the backbone's encoder with `feature_size` outputs."""

    def __init__(
        self, backbone: Backbone, image_shape: Sequence[int], hidden_dims: Sequence[int], feature_size: int
    ) -> None:
        super().__init__()
        self.features = build_encoder(backbone, image_shape, hidden_dims, feature_size)
        # the leaky ReLU of GAN discriminators: a unit that is off still passes a gradient to the generator
        self.head = nn.Sequential(nn.LeakyReLU(0.2), nn.Linear(feature_size, 1))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(B, *image_shape) -> features (B, feature_size), logits (B,)."""
        features = self.features(images)
        return features, self.head(features).squeeze(1)


class VAEGAN(VAE, SeveralOptimizers):
    """VAE/GAN: the VAE's pixel likelihood is replaced by a Gaussian likelihood of the features Dis_l of a
    discriminator Dis, trained as a GAN against the decoder's reconstructions and prior samples.

    With x~ = Dec(z), z ~ q(z | x), and x_p = Dec(z_p), z_p ~ N(0, I), per image:
    `kl` = L_prior = KL(q(z | x) || p(z)); `llike` = L_llike = ||Dis_l(x) - Dis_l(x~)||^2 summed over the
    features (minus the log-likelihood of N(Dis_l(x); Dis_l(x~), I / 2) up to a constant, as the `gaussian`
    pixel likelihood is the summed squared error); `discriminator_loss` = -log D(x) - log(1 - D(x~)) -
    log(1 - D(x_p)), D = sigmoid(logit), the binary cross-entropy of real against both kinds of generated
    images (the paper's L_GAN, which its eq. 7 writes as the classifier's log-likelihood and its Algorithm 1
    uses as this loss: Dis descends it, Dec ascends it).

    Three optimizers, each on its own loss with respect to its own weights only: `encoder` minimises
    `encoder_loss` = L_llike + beta * L_prior (the VAE's bound with the learned similarity); `decoder`
    minimises `decoder_loss` = gamma * L_llike + `generator_loss`; `discriminator` minimises
    `discriminator_loss`. As in the paper, L_llike never trains Dis and the GAN terms never train the
    encoder: Dis enters L_llike and `generator_loss` with its weights held fixed, and sees x~ and x_p
    detached in `discriminator_loss`.

    `loss`, what `val/loss` reports and checkpoints monitor, is the pixel-space negative ELBO `recon` +
    beta * `kl` (`recon`: the reconstruction term of `likelihood` at x~), which no optimizer minimises: the
    trained objectives are measured in Dis's features, which sharpen as Dis learns, so `encoder_loss` rises
    through training however good the reconstructions get (its minimum would pick the untrained model), and
    the GAN terms are a game whose value does not fall. Also reports the discriminator's probabilities of
    "real" `d_real`, `d_recon`, `d_prior` (of x, x~, x_p); every term is (B,).

    The margin/equilibrium rule of the authors' released code and of pythae (skip the decoder's or Dis's
    step when the batch's GAN costs leave equilibrium +- margin) is not in the paper and is left out: it
    decides on the host from each batch's losses, a wait for the GPU at every step.

    Args:
        gamma: the weight of L_llike against the GAN term in the decoder's loss (gamma in the paper's
            Algorithm 1). Default 1: pythae's default adversarial_loss_scale 0.5 weighs them equally too
            (its decoder loss is 0.5 L_llike - 0.5 L_GAN); the authors' released CelebA code weighs its
            feature error, over whole convolution maps, by 1e-6 against 1 - 1e-6 on the GAN term.
        discriminator_dims: hidden widths (mlp) or channels (conv) of Dis, from the image side (default: the
            model's `hidden_dims`).
        feature_size: the width of Dis_l, Dis's last hidden layer (taken before its activation), where
            L_llike is measured. Default 512, the width of the paper's discriminator's last hidden layer
            (which measures L_llike at a convolution layer below it; pythae's reconstruction_layer -1 takes
            Dis's output).
        generator_loss: the decoder's GAN term. `non_saturating` (default): -log D(x~) - log D(x_p),
            Goodfellow et al.'s usual form; it has the same fixed point as the paper's and a strong gradient
            where Dis rejects the generated images confidently, as it does early in training. `minimax`: the
            paper's Algorithm 1, log(1 - D(x~)) + log(1 - D(x_p)) (minus the generated images' part of
            Dis's loss), whose gradient vanishes there.
        nll_samples: as for `VAE`, but 0 (off) by default: the decoder is not trained on a pixel
            likelihood, so `test/nll` (the pixel likelihood's importance-sampled NLL) is only a diagnostic.
        **kwargs: the arguments of `VAE` (`beta` and `kl_warmup_steps` weigh L_prior in the encoder's loss).
    """

    def __init__(
        self,
        gamma: float = 1.0,
        discriminator_dims: Sequence[int] | None = None,
        feature_size: int = 512,
        generator_loss: GeneratorLoss = "non_saturating",
        nll_samples: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(nll_samples=nll_samples, **kwargs)
        if gamma < 0:
            raise ConfigError(
                f"gamma must be >= 0 (the weight of L_llike in the decoder's loss), got {gamma}"
            )
        if feature_size < 1:
            raise ConfigError(f"feature_size must be a positive number of features, got {feature_size}")
        if generator_loss not in ("non_saturating", "minimax"):
            raise ConfigError(f"generator_loss must be 'non_saturating' or 'minimax', got {generator_loss!r}")
        dims = list(self.hidden_dims if discriminator_dims is None else discriminator_dims)
        if any(width <= 0 for width in dims) or (self.backbone == "conv" and not dims):
            raise ConfigError(
                f"discriminator_dims must be positive sizes (at least one for the conv backbone), got {dims}"
            )
        self.gamma = gamma
        self.feature_size = feature_size
        self.generator_loss = generator_loss
        self.discriminator = Discriminator(self.backbone, self.image_shape, dims, feature_size)

    def frozen_discriminator(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Dis's features and logits of `images` with its weights held fixed: a gradient reaches the images,
        never Dis (the paper's rule for L_llike, and the generator's term that trains Dec alone)."""
        fixed = {name: weight.detach() for name, weight in self.discriminator.named_parameters()}
        return functional_call(self.discriminator, fixed, (images,))

    def loss_terms(self, batch: Batch) -> dict[str, Tensor]:
        x = batch.inputs
        mu, logvar, decode_raw = self.posterior(batch)
        z = reparameterize(mu, logvar)
        # one decoder pass for the reconstructions and the prior samples
        raw_recon, raw_prior = decode_raw(torch.cat([z, self.prior_noise(len(x))])).chunk(2)
        x_recon, x_prior = self.output_mean(raw_recon), self.output_mean(raw_prior)

        generated = torch.cat([x_recon, x_prior])
        # Dis's own pass (the one that trains it): real images and the generated ones, detached
        features, logits = self.discriminator(torch.cat([x, generated.detach()]))
        real_logits, fake_recon, fake_prior = logits.float().chunk(3)
        generated_features, generated_logits = self.frozen_discriminator(generated)
        recon_logits, prior_logits = generated_logits.float().chunk(2)
        # sums in float32, as base.py's: bfloat16 keeps ~3 digits
        real_features, recon_features = features[: len(x)].float(), generated_features[: len(x)].float()
        llike = (real_features.detach() - recon_features).square().sum(1)

        # -log D = softplus(-logit), -log(1 - D) = softplus(logit)
        discriminator_loss = F.softplus(-real_logits) + F.softplus(fake_recon) + F.softplus(fake_prior)
        if self.generator_loss == "non_saturating":
            generator_loss = F.softplus(-recon_logits) + F.softplus(-prior_logits)
        else:
            generator_loss = -F.softplus(recon_logits) - F.softplus(prior_logits)

        kl_terms = self.kl_terms(mu, logvar, z)
        weight = self.kl_weight() if self.training else self.beta
        recon = self.reconstruction_loss(raw_recon, x)
        return {
            "loss": recon + weight * kl_terms["kl"],
            "encoder_loss": llike + weight * kl_terms["kl"],
            "llike": llike,
            "recon": recon,
            **kl_terms,
            "decoder_loss": self.gamma * llike + generator_loss,
            "generator_loss": generator_loss,
            "discriminator_loss": discriminator_loss,
            "d_real": torch.sigmoid(real_logits),
            "d_recon": torch.sigmoid(fake_recon),
            "d_prior": torch.sigmoid(fake_prior),
        }

    def optimized_parts(self) -> tuple[OptimizedPart, ...]:
        return (
            OptimizedPart("encoder", tuple(self.encoder.parameters()), "encoder_loss"),
            OptimizedPart("decoder", tuple(self.decoder.parameters()), "decoder_loss"),
            OptimizedPart("discriminator", tuple(self.discriminator.parameters()), "discriminator_loss"),
        )
