"""Anomaly localisation, measured: an inspection set built from MNIST digits with defects drawn on them (and
their exact masks), configs fitted and tested on it through the real CLI, and the memory the localisation
metrics take on a large test set.

    python benchmarks/localisation.py build --data-dir ../shared/data --out /tmp/inspection
    python benchmarks/localisation.py evaluate --root /tmp/inspection \
        --runs "squared error=" "smoothed=--model.score_smoothing 2" \
               "AE-SSIM=--model.likelihood ssim --model.map_measure ssim"
    python benchmarks/localisation.py memory --images 1000 --size 256

  build     root/train/good/ (--train digits of every class, 64 x 64 RGB), root/test/good/ (--test-good) and
            root/test/{scratch,stain}/ (--test-defect each) with root/ground_truth/<defect>/<stem>_mask.png:
            a scratch is a bright line 2 px wide, a stain a grey ellipse; each mask is exactly what was drawn.
  evaluate  for each run (`name=arguments`, added to --config's): `fit` on the set, then `test`: image
            AUROC/AUPR/F1 and pixel AUROC, AUPRO and pixel F1; results in
            benchmarks/results/localisation.json (or --out), with a table beside it (.md).
  memory    the peak memory the localisation metrics (the Evaluator's `Localisation`, as a test of that many
            pixels sets it up) add while they take --images maps of --size pixels a side with masks, in
            batches of 32, and compute.
"""

import argparse
import gzip
import json
import os
import platform
import resource
import shlex
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from ae_lightning.cli import main
from ae_lightning.evaluation.maps import Localisation, MapCalibration

REPO = Path(__file__).resolve().parents[1]
DEFECTS = ("scratch", "stain")


def mnist_digits(data_dir: Path, train: bool) -> np.ndarray:
    """(N, 28, 28) uint8 digits of the MNIST training or test file."""
    name = "train-images-idx3-ubyte.gz" if train else "t10k-images-idx3-ubyte.gz"
    with gzip.open(data_dir / "MNIST" / "raw" / name) as file:
        return np.frombuffer(file.read(), np.uint8, offset=16).reshape(-1, 28, 28)


def render(digit: np.ndarray, size: int) -> Image.Image:
    """A digit scaled to 7/8 of `size`, centred on a dark grey background, as RGB."""
    inner = round(size * 7 / 8)
    scaled = Image.fromarray(digit).resize((inner, inner), Image.BILINEAR)
    canvas = Image.new("L", (size, size), 24)
    offset = (size - inner) // 2
    canvas.paste(Image.fromarray(np.maximum(np.asarray(scaled), 24).astype(np.uint8)), (offset, offset))
    return canvas.convert("RGB")


def draw_defect(image: Image.Image, kind: str, rng: np.random.Generator) -> Image.Image:
    """Draws a defect on `image` (in place) and returns its mask (mode L, 255 on the defect)."""
    size = image.width
    mask = Image.new("L", image.size, 0)
    pen, marker = ImageDraw.Draw(image), ImageDraw.Draw(mask)
    if kind == "scratch":
        x, y = rng.uniform(0.2, 0.8, 2) * size
        angle, length = rng.uniform(0, np.pi), rng.uniform(0.3, 0.6) * size
        dx, dy = np.cos(angle) * length / 2, np.sin(angle) * length / 2
        line = [(x - dx, y - dy), (x + dx, y + dy)]
        pen.line(line, fill=(235, 235, 235), width=2)
        marker.line(line, fill=255, width=2)
    else:
        x, y = rng.uniform(0.25, 0.75, 2) * size
        rx, ry = rng.uniform(0.06, 0.12, 2) * size
        box = [x - rx, y - ry, x + rx, y + ry]
        grey = int(rng.integers(110, 170))
        pen.ellipse(box, fill=(grey, grey, grey))
        marker.ellipse(box, fill=255)
    return mask


def build(args: argparse.Namespace) -> None:
    """Writes the inspection set (see the module's docstring)."""
    rng = np.random.default_rng(args.seed)
    train, test = mnist_digits(args.data_dir, True), mnist_digits(args.data_dir, False)
    out = args.out
    picks = {"train": rng.choice(len(train), args.train, replace=False)}
    test_picks = rng.choice(len(test), args.test_good + args.test_defect * len(DEFECTS), replace=False)
    for i, index in enumerate(picks["train"]):
        save(render(train[index], args.size), out / "train" / "good" / f"{i:04d}.png")
    for i, index in enumerate(test_picks[: args.test_good]):
        save(render(test[index], args.size), out / "test" / "good" / f"{i:04d}.png")
    rest = test_picks[args.test_good :]
    for d, kind in enumerate(DEFECTS):
        for i, index in enumerate(rest[d * args.test_defect : (d + 1) * args.test_defect]):
            image = render(test[index], args.size)
            mask = draw_defect(image, kind, rng)
            save(image, out / "test" / kind / f"{i:04d}.png")
            save(mask, out / "ground_truth" / kind / f"{i:04d}_mask.png")
    print(
        f"wrote {out}: {args.train} training, {args.test_good} normal and {args.test_defect} x {DEFECTS} test"
    )


def save(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def evaluate(args: argparse.Namespace) -> None:
    """Fits and tests each run on the set (those not yet in --out for the same set, config and seed); writes
    the test metrics and a table."""
    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "root": str(args.root),
        "config": args.config,
        "seed": args.seed,
        "runs": {},
    }
    if args.out.is_file():  # runs of the same set and config are added to those already there
        earlier = json.loads(args.out.read_text())
        if (earlier["root"], earlier["config"], earlier["seed"]) == (str(args.root), args.config, args.seed):
            results["runs"] = earlier["runs"]
    for run in args.runs:
        name, _, extra = run.partition("=")
        if name in results["runs"] and results["runs"][name]["arguments"] == extra:
            continue
        start = time.perf_counter()
        common = ["--data.root", str(args.root), "--seed_everything", str(args.seed), *shlex.split(extra)]
        fitted = main(["fit", "--config", str(REPO / "configs" / args.config), *common])
        fitted.trainer.test(fitted.model, datamodule=fitted.datamodule, verbose=False)
        metrics = {k: v.item() for k, v in fitted.trainer.callback_metrics.items() if k.startswith("test/")}
        results["runs"][name] = {"arguments": extra, **metrics, "seconds": time.perf_counter() - start}
        print(name, {k: round(v, 4) for k, v in metrics.items()}, flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)  # after each run: a later failure keeps it
        args.out.write_text(json.dumps(results, indent=1) + "\n")
        args.out.with_suffix(".md").write_text(table(results))


COLUMNS = ("test/auroc", "test/aupr", "test/f1", "test/pixel_auroc", "test/aupro", "test/pixel_f1")


def table(results: dict[str, Any]) -> str:
    """The runs as a markdown table: arguments, the image and pixel metrics, the time."""
    names = [column.removeprefix("test/") for column in COLUMNS]
    lines = [f"| run | arguments | {' | '.join(names)} | fit + test s |", "|" + " --- |" * (len(names) + 3)]
    for name, run in results["runs"].items():
        numbers = " | ".join(f"{run[column]:.3f}" if column in run else "-" for column in COLUMNS)
        lines.append(f"| {name} | `{run['arguments'] or '(config)'}` | {numbers} | {run['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory(args: argparse.Namespace) -> None:
    """The peak memory the localisation metrics add over a large test set (see the module's docstring)."""
    size, batch = args.size, 32
    generator = torch.Generator().manual_seed(0)
    masks = torch.zeros(batch, size, size, dtype=torch.bool)
    for i in range(0, batch, 2):  # half the images have a defect
        masks[i, size // 4 : size // 2, size // 3 : size // 2] = True
    maps = torch.rand(batch, size, size, generator=generator) + masks
    metric = Localisation()
    metric.calibrate(MapCalibration(0.0, 1.0, 0.95), args.images * size * size, torch.device("cpu"))
    metric.update({"anomaly_map": maps, "gt_mask": masks})  # allocator and kernels warmed up
    metric.compute()
    metric.calibrate(MapCalibration(0.0, 1.0, 0.95), args.images * size * size, torch.device("cpu"))
    before = peak_rss_mb()
    start = time.perf_counter()
    for _ in range(0, args.images, batch):
        maps = torch.rand(batch, size, size, generator=generator) + masks
        metric.update({"anomaly_map": maps, "gt_mask": masks})
    results = {name: value.item() for name, value in metric.compute().items()}
    print(
        f"{args.images} maps of {size} x {size} ({args.images * size * size / 1e6:.1f} M pixels, "
        f"{'binned' if metric.auroc.num_bins else 'exact'}): peak memory +{peak_rss_mb() - before:.0f} MB "
        f"over {before:.0f} MB, {time.perf_counter() - start:.1f} s; {results}"
    )


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    made = commands.add_parser("build")
    made.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    made.add_argument("--out", type=Path, required=True)
    made.add_argument("--size", type=int, default=64)
    made.add_argument("--train", type=int, default=2000)
    made.add_argument("--test-good", type=int, default=200)
    made.add_argument("--test-defect", type=int, default=100)
    made.add_argument("--seed", type=int, default=0)
    measured = commands.add_parser("evaluate")
    measured.add_argument("--root", type=Path, required=True)
    measured.add_argument("--config", default="folder_anomaly.yaml")
    measured.add_argument("--runs", nargs="+", default=["folder_anomaly.yaml="], help="name=CLI arguments")
    measured.add_argument("--seed", type=int, default=0)
    measured.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "localisation.json")
    held = commands.add_parser("memory")
    held.add_argument("--images", type=int, default=1000)
    held.add_argument("--size", type=int, default=256)
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse()
    {"build": build, "evaluate": evaluate, "memory": memory}[arguments.command](arguments)
