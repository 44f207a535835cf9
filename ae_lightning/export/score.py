"""`python cli.py score`: anomaly scores of images from an exported model, with no Lightning at run time.

    python cli.py score --model exported/ --input images/ --output scores.csv
    python cli.py score --model exported/ --input data/MNIST/raw/t10k-images-idx3-ubyte --output scores.csv
    python cli.py score --model exported/ --input images/ --output scores.csv --maps heat_maps/

Writes one CSV row per image: `path` (folders) or `index` (IDX and NPY files), `anomaly_score`,
`pred_anomaly` (anomaly_score > the checkpoint's threshold; empty when the checkpoint had none).

With `--maps DIR`, also the heat map of every image into DIR: `<row>_<file stem>.png` (folders; row: the
CSV's, from 0) or `<index>.png` (IDX and NPY files), numbers zero-padded to 6 digits. Each is the image beside
its anomaly map in matplotlib's inferno colours, on the scale of model.json's `map_calibration` (the range of
the normal validation images' maps, so maps compare across images; without one, each map on its own range,
and a notice says so). A model whose scorer gives no map (Deep SVDD, vector data, exports before model.json
version 3) is refused before anything is written.
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


def score(
    model_dir: Path, source: Path, output: Path, batch_size: int = 256, maps: Path | None = None
) -> int:
    """Scores every image of `source` with the exported scorer in `model_dir` into the CSV `output`, and with
    `maps` writes each image's heat map into that folder; returns how many images were scored."""
    model = ExportedModel(model_dir)
    if model.spec.get("conditional"):
        raise ConfigError("a conditional model's scorer needs each image's label: score it from Python")
    if maps is not None and not model.gives_map:
        raise ConfigError(
            f"the model in {model_dir} has no anomaly map (its scorer gives anomaly_score and pred_anomaly "
            f"only: {model.spec.get('variant')} does not localise, or the export predates maps): leave out "
            "--maps"
        )
    scale = (None, None) if maps is None or model.map_scale is None else model.map_scale
    if maps is not None and model.map_scale is None:
        print(
            f"{model_dir}/model.json has no map calibration: each heat map is scaled to its own range, so "
            "they do not compare",
            file=sys.stderr,
        )
    has_threshold = model.spec.get("threshold") is not None
    rows: list[list[object]] = []
    names_are_paths = source.is_dir()
    with tqdm(desc=f"Scoring {source}", unit="img", disable=None) as bar:
        for names, pixels in read_inputs(source, model, batch_size):
            scores, pred_anomaly, *anomaly_map = model.run("scorer", model.model_input(pixels))
            if maps is not None:
                write_maps(maps, names, len(rows), pixels, anomaly_map[0], names_are_paths, scale)
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


def write_maps(
    folder: Path,
    names: list[str],
    first_row: int,
    pixels: np.ndarray,
    anomaly_map: np.ndarray,
    names_are_paths: bool,
    scale: tuple[float | None, float | None],
) -> None:
    """Writes the heat maps of one batch of uint8 pixels (B, C, H, W) and their maps (B, H, W), rows
    `first_row` on, named by row and file stem (paths) or by index."""
    import torch

    from ae_lightning.heat_maps import heat_map_name, write_heat_maps

    stems = [
        heat_map_name(first_row + row, name) if names_are_paths else heat_map_name(int(name))
        for row, name in enumerate(names)
    ]
    images = torch.from_numpy(pixels).float() / 255
    write_heat_maps(folder, stems, images, torch.from_numpy(np.asarray(anomaly_map)), *scale)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="cli.py score",
        description="Anomaly scores of images from an exported model (cli.py export), no Lightning needed.",
    )
    parser.add_argument("--model", type=Path, required=True, help="the folder cli.py export wrote")
    parser.add_argument("--input", type=Path, required=True, help="a folder of images, an IDX or a NPY file")
    parser.add_argument("--output", type=Path, default=Path("scores.csv"), help="the CSV to write")
    parser.add_argument("--batch_size", type=int, default=256, help="images per run of the scorer")
    parser.add_argument(
        "--maps",
        type=Path,
        default=None,
        metavar="DIR",
        help="also write each image's heat map (the image beside its anomaly map, on the scale of "
        "model.json's map_calibration) as a PNG into DIR: <row>_<file stem>.png or <index>.png",
    )
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch_size must be at least 1, got {args.batch_size}")
    try:
        count = score(args.model, args.input, args.output, args.batch_size, args.maps)
    except AELightningError as err:
        sys.exit(f"error: {err}")
    print(f"Scores of {count} images written to {args.output}", file=sys.stderr)
    if args.maps is not None:
        print(f"Heat maps of {count} images written to {args.maps}", file=sys.stderr)
