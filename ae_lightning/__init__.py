"""ae_lightning: train autoencoders (AE, denoising AE, VAE) with PyTorch Lightning from one YAML file."""

__version__ = "0.1.0"
