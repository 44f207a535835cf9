"""`python cli.py score`: anomaly scores of images from an exported model, with no Lightning at run time.

    python cli.py score --model exported/ --input images/ --output scores.csv
    python cli.py score --model exported/ --input data/MNIST/raw/t10k-images-idx3-ubyte --output scores.csv

Writes one CSV row per image: `path` (folders) or `index` (IDX and NPY files), `anomaly_score`,
`pred_anomaly` (anomaly_score > the checkpoint's threshold; empty when the checkpoint had none).
"""

import argparse
import csv
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ae_lightning.errors import AELightningError, ConfigError
from ae_lightning.export.runtime import ExportedModel, read_inputs
from ae_lightning.files import atomic_write


def score(model_dir: Path, source: Path, output: Path, batch_size: int = 256) -> int:
    """Scores every image of `source` with the exported scorer in `model_dir` into the CSV `output`;
    returns how many images were scored."""
    model = ExportedModel(model_dir)
    if model.spec.get("conditional"):
        raise ConfigError("a conditional model's scorer needs each image's label: score it from Python")
    has_threshold = model.spec.get("threshold") is not None
    rows: list[list[object]] = []
    names_are_paths = source.is_dir()
    with tqdm(desc=f"Scoring {source}", unit="img", disable=None) as bar:
        for names, pixels in read_inputs(source, model, batch_size):
            scores, pred_anomaly = model.run("scorer", model.model_input(pixels))
            for name, value, flag in zip(
                names, scores.tolist(), np.asarray(pred_anomaly).tolist(), strict=True
            ):
                rows.append([name, value, flag if has_threshold else ""])
            bar.update(len(names))
    with atomic_write(output, "w") as file:
        writer = csv.writer(file)
        writer.writerow(["path" if names_are_paths else "index", "anomaly_score", "pred_anomaly"])
        writer.writerows(rows)
    return len(rows)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="cli.py score",
        description="Anomaly scores of images from an exported model (cli.py export), no Lightning needed.",
    )
    parser.add_argument("--model", type=Path, required=True, help="the folder cli.py export wrote")
    parser.add_argument("--input", type=Path, required=True, help="a folder of images, an IDX or a NPY file")
    parser.add_argument("--output", type=Path, default=Path("scores.csv"), help="the CSV to write")
    parser.add_argument("--batch_size", type=int, default=256, help="images per run of the scorer")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch_size must be at least 1, got {args.batch_size}")
    try:
        count = score(args.model, args.input, args.output, args.batch_size)
    except AELightningError as err:
        sys.exit(f"error: {err}")
    print(f"Scores of {count} images written to {args.output}", file=sys.stderr)
