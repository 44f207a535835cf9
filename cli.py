"""Train, validate, test, predict or export an autoencoder (`python cli.py fit --config configs/vae.yaml`), or
score images with an exported one (`python cli.py score --model exported/ --input images/`). The same as the
`ae-lightning` command `pip install` makes."""

if __name__ == "__main__":
    from ae_lightning.cli.entry import run

    run()
