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
