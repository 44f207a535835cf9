"""One LightningModule per autoencoder variant: each builds its torch model (`ae_lightning.autoencoders`)
from the config's arguments; everything else is `AutoencoderModule`'s. `--model.help <class>` lists the
arguments: those of `AutoencoderModule` and of the torch model."""

from typing import Any

from ae_lightning import autoencoders
from ae_lightning.models.module import AutoencoderModule


class AE(AutoencoderModule):
    """The undercomplete autoencoder (`autoencoders.AE`)."""

    def build_autoencoder(self, **model_args: Any) -> autoencoders.AE:
        return autoencoders.AE(**model_args)


class DenoisingAE(AutoencoderModule):
    """The denoising autoencoder (`autoencoders.DenoisingAE`): validation and test add `recon_corrupted`."""

    def build_autoencoder(self, **model_args: Any) -> autoencoders.DenoisingAE:
        return autoencoders.DenoisingAE(**model_args)


class SparseAE(AutoencoderModule):
    """The sparse autoencoder (`autoencoders.SparseAE`)."""

    def build_autoencoder(self, **model_args: Any) -> autoencoders.SparseAE:
        return autoencoders.SparseAE(**model_args)


class ContractiveAE(AutoencoderModule):
    """The contractive autoencoder (`autoencoders.ContractiveAE`)."""

    def build_autoencoder(self, **model_args: Any) -> autoencoders.ContractiveAE:
        return autoencoders.ContractiveAE(**model_args)


class VAE(AutoencoderModule):
    """The (beta-)VAE (`autoencoders.VAE`): validation logs `kl_dim/<i>` and `active_units`; test with the
    Bernoulli likelihood logs `test/nll`."""

    def build_autoencoder(self, **model_args: Any) -> autoencoders.VAE:
        return autoencoders.VAE(**model_args)


class IWAE(AutoencoderModule):
    """The importance-weighted autoencoder (`autoencoders.IWAE`)."""

    def build_autoencoder(self, **model_args: Any) -> autoencoders.IWAE:
        return autoencoders.IWAE(**model_args)


class ConditionalVAE(AutoencoderModule):
    """The conditional VAE (`autoencoders.ConditionalVAE`): batches must carry labels."""

    def build_autoencoder(self, **model_args: Any) -> autoencoders.ConditionalVAE:
        return autoencoders.ConditionalVAE(**model_args)


class VQVAE(AutoencoderModule):
    """The vector-quantised VAE (`autoencoders.VQVAE`): validation logs `perplexity` and `codes_used`."""

    def build_autoencoder(self, **model_args: Any) -> autoencoders.VQVAE:
        return autoencoders.VQVAE(**model_args)


class WAE(AutoencoderModule):
    """The Wasserstein autoencoder with the MMD penalty (`autoencoders.WAE`; pythae's WAE_MMD)."""

    def build_autoencoder(self, **model_args: Any) -> autoencoders.WAE:
        return autoencoders.WAE(**model_args)


class InfoVAE(AutoencoderModule):
    """InfoVAE with the MMD divergence (`autoencoders.InfoVAE`; pythae's INFOVAE_MMD)."""

    def build_autoencoder(self, **model_args: Any) -> autoencoders.InfoVAE:
        return autoencoders.InfoVAE(**model_args)


class RAE(AutoencoderModule):
    """The regularised autoencoder, L2 or gradient penalty (`autoencoders.RAE`; pythae's RAE_L2, RAE_GP)."""

    def build_autoencoder(self, **model_args: Any) -> autoencoders.RAE:
        return autoencoders.RAE(**model_args)


class DisentangledBetaVAE(AutoencoderModule):
    """The beta-VAE with a rising capacity (`autoencoders.DisentangledBetaVAE`): logs `train/capacity`."""

    def build_autoencoder(self, **model_args: Any) -> autoencoders.DisentangledBetaVAE:
        return autoencoders.DisentangledBetaVAE(**model_args)


class BetaTCVAE(AutoencoderModule):
    """The beta-TC-VAE (`autoencoders.BetaTCVAE`): logs the three parts of the KL."""

    def build_autoencoder(self, **model_args: Any) -> autoencoders.BetaTCVAE:
        return autoencoders.BetaTCVAE(**model_args)


class MSSSIMVAE(AutoencoderModule):
    """The VAE with an MS-SSIM reconstruction term (`autoencoders.MSSSIMVAE`)."""

    def build_autoencoder(self, **model_args: Any) -> autoencoders.MSSSIMVAE:
        return autoencoders.MSSSIMVAE(**model_args)


class VampVAE(AutoencoderModule):
    """The VAE with a VampPrior (`autoencoders.VampVAE`; pythae's VAMP)."""

    def build_autoencoder(self, **model_args: Any) -> autoencoders.VampVAE:
        return autoencoders.VampVAE(**model_args)


class MIWAE(AutoencoderModule):
    """The multiply importance-weighted autoencoder (`autoencoders.MIWAE`)."""

    def build_autoencoder(self, **model_args: Any) -> autoencoders.MIWAE:
        return autoencoders.MIWAE(**model_args)


class CIWAE(AutoencoderModule):
    """The combination of the ELBO and the IWAE bound (`autoencoders.CIWAE`)."""

    def build_autoencoder(self, **model_args: Any) -> autoencoders.CIWAE:
        return autoencoders.CIWAE(**model_args)


class HVAE(AutoencoderModule):
    """The Hamiltonian VAE (`autoencoders.HVAE`): logs `train/leapfrog_step_size` and `train/beta_zero`."""

    def build_autoencoder(self, **model_args: Any) -> autoencoders.HVAE:
        return autoencoders.HVAE(**model_args)


class PlanarFlowVAE(AutoencoderModule):
    """The VAE with planar or radial flows on its posterior (`autoencoders.PlanarFlowVAE`; pythae's
    VAE_LinNF): logs `log_det`."""

    def build_autoencoder(self, **model_args: Any) -> autoencoders.PlanarFlowVAE:
        return autoencoders.PlanarFlowVAE(**model_args)


class IAFVAE(AutoencoderModule):
    """The VAE with inverse autoregressive flows on its posterior (`autoencoders.IAFVAE`; pythae's
    VAE_IAF): logs `log_det`."""

    def build_autoencoder(self, **model_args: Any) -> autoencoders.IAFVAE:
        return autoencoders.IAFVAE(**model_args)


class SVAE(AutoencoderModule):
    """The hyperspherical VAE (`autoencoders.SVAE`): von Mises-Fisher posterior, uniform prior; logs
    `kappa`."""

    def build_autoencoder(self, **model_args: Any) -> autoencoders.SVAE:
        return autoencoders.SVAE(**model_args)


class HRQVAE(AutoencoderModule):
    """Hierarchical residual quantisation (`autoencoders.HRQVAE`): validation logs `perplexity` and
    `codes_used` over every level's entries."""

    def build_autoencoder(self, **model_args: Any) -> autoencoders.HRQVAE:
        return autoencoders.HRQVAE(**model_args)


class PoincareVAE(AutoencoderModule):
    """The Poincaré-ball VAE (`autoencoders.PoincareVAE`; pythae's PoincareVAE): wrapped or Riemannian normal
    posterior and prior on a hyperbolic latent space."""

    def build_autoencoder(self, **model_args: Any) -> autoencoders.PoincareVAE:
        return autoencoders.PoincareVAE(**model_args)


class RHVAE(AutoencoderModule):
    """The Riemannian Hamiltonian VAE (`autoencoders.RHVAE`): a learnt metric, generalised leapfrog steps."""

    def build_autoencoder(self, **model_args: Any) -> autoencoders.RHVAE:
        return autoencoders.RHVAE(**model_args)


class FactorVAE(AutoencoderModule):
    """FactorVAE (`autoencoders.FactorVAE`): a VAE penalising the total correlation of its codes, estimated by
    a discriminator that trains with its own optimizer (`--model.optimizers.discriminator`)."""

    def build_autoencoder(self, **model_args: Any) -> autoencoders.FactorVAE:
        return autoencoders.FactorVAE(**model_args)


class AdversarialAE(AutoencoderModule):
    """The adversarial autoencoder (`autoencoders.AdversarialAE`): a code discriminator, with its own
    optimizer, pulls the codes to the prior."""

    def build_autoencoder(self, **model_args: Any) -> autoencoders.AdversarialAE:
        return autoencoders.AdversarialAE(**model_args)


class PIWAE(AutoencoderModule):
    """The partially importance-weighted autoencoder (`autoencoders.PIWAE`): the encoder and the decoder,
    each with its optimizer, on the MIWAE and the IWAE bound."""

    def build_autoencoder(self, **model_args: Any) -> autoencoders.PIWAE:
        return autoencoders.PIWAE(**model_args)


class VAEGAN(AutoencoderModule):
    """VAE/GAN (`autoencoders.VAEGAN`): reconstruction in a discriminator's features; encoder, decoder and
    discriminator each with an optimizer."""

    def build_autoencoder(self, **model_args: Any) -> autoencoders.VAEGAN:
        return autoencoders.VAEGAN(**model_args)


class RestorationAE(AutoencoderModule):
    """The attribute-restoration autoencoder (`autoencoders.RestorationAE`): the anomaly score is the
    restoration error over every fixed erasure."""

    def build_autoencoder(self, **model_args: Any) -> autoencoders.RestorationAE:
        return autoencoders.RestorationAE(**model_args)


class MemAE(AutoencoderModule):
    """The memory-augmented autoencoder (`autoencoders.MemAE`): the decoder sees the memory's read of each
    code; the loss terms add `entropy` and `memory_items` (items each code reads)."""

    def build_autoencoder(self, **model_args: Any) -> autoencoders.MemAE:
        return autoencoders.MemAE(**model_args)
