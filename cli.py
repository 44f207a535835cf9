"""Train, validate, test or predict with an autoencoder: `python cli.py fit --config configs/vae.yaml`."""

from ae_lightning.cli import main

if __name__ == "__main__":
    main()
