"""Train, validate, test, predict or export an autoencoder (`python cli.py fit --config configs/vae.yaml`), or
score images with an exported one (`python cli.py score --model exported/ --input images/`)."""

import sys

if __name__ == "__main__":
    if sys.argv[1:2] == ["score"]:  # no Lightning: the exported graphs and the images only
        from ae_lightning.export.score import main as score

        score(sys.argv[2:])
    else:
        from ae_lightning.cli import main

        main()
