"""What trained autoencoders are worth, measured through the real CLI: one-class anomaly detection, feature
quality and the Bernoulli VAE's test NLL, with PCA baselines.

    python benchmarks/evaluation.py --data-dir ../shared/data one_class --configs one_class.yaml anomaly.yaml
    python benchmarks/evaluation.py --data-dir ../shared/data features --epochs 15
    python benchmarks/evaluation.py --data-dir ../shared/data nll --epochs 30

  one_class  the one-class protocol (benchmarks/one_class.py): for each config (--configs), data set (MNIST,
             FashionMNIST: <data-dir>/<name>/raw), class c (--classes) and seed (--seeds 0 1 2):
             `fit --data.normal_classes [c] --seed_everything s` with the config's epochs (or --epochs), then
             `test` of the last weights: test/auroc, test/aupr, test/f1 over the whole test set (anomaly = not
             c); PCA with --components components fitted on the same normal images. Resumes a half-done
             sweep in --out (--fresh starts again); writes the per-class tables, with the published numbers,
             beside it as .md.
  features   each model (--models: AE, DAE, VAE, and DAE-features = configs/dae_features.yaml) fitted on all
             training images, then `test`: test/linear_probe_acc and test/knn_acc of
             its latents (FeatureQuality); the same probe and k-NN on PCA features.
  nll        configs/vae_bernoulli.yaml fitted, then `test`: test/nll (k = 1000) beside the negative ELBO.
Each writes benchmarks/results/<part>.json (or --out) with the settings, the machine and every number.
"""

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import one_class as protocol
import torch

from ae_lightning.cli import main
from ae_lightning.data import MNISTDataModule
from ae_lightning.evaluation.features import knn_accuracy, linear_probe_accuracy

REPO = Path(__file__).resolve().parents[1]
MODELS = {"AE": "ae.yaml", "DAE": "dae.yaml", "VAE": "vae.yaml"}
#: further configs `features` can measure (--models)
FEATURE_MODELS = {**MODELS, "DAE-features": "dae_features.yaml"}


def cli_args(config: str, args: argparse.Namespace, *extra: str) -> list[str]:
    return [
        "--config", str(REPO / "configs" / config),
        f"--data.data_dir={args.data_dir}",
        *([f"--trainer.max_epochs={args.epochs}"] if args.epochs is not None else []),
        f"--data.val_size={args.val_size}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.devices=1",
        *args.extra,
        *extra,
    ]  # fmt: skip


def fit_and_test(config: str, args: argparse.Namespace, *extra: str) -> tuple[dict[str, float], float]:
    """Fits a config through the CLI, tests its last weights; the test metrics and the seconds it took."""
    start = time.perf_counter()
    fitted = main(["fit", *cli_args(config, args, *extra)])
    fit_seconds = time.perf_counter() - start
    fitted.trainer.test(fitted.model, datamodule=fitted.datamodule, verbose=False)
    metrics = {name: value.item() for name, value in fitted.trainer.callback_metrics.items()}
    tested = {k: v for k, v in metrics.items() if k.startswith("test/") and "kl_dim" not in k}
    return {**tested, "fit_seconds": fit_seconds}, time.perf_counter() - start


def pca(train: torch.Tensor, components: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (P,) and the top `components` principal directions (P, components) of flattened images."""
    mean = train.mean(0)
    _, _, v = torch.linalg.svd(train - mean, full_matrices=False)
    return mean, v[:components].T


def flat_images(datamodule: MNISTDataModule, split: str) -> torch.Tensor:
    return datamodule.datasets[split].images.flatten(1).double() / 255


def one_class(args: argparse.Namespace) -> dict[str, Any]:
    """The one-class sweep (`one_class.sweep`): every config x data set x class x seed, resumed from `out`."""
    # what the numbers depend on (a sweep resumed with others is refused), and what it covers (may grow)
    settings = {
        "epochs": args.epochs,
        "val_size": args.val_size,
        "components": args.components,
        "extra": args.extra,
    }
    plan = {"configs": args.configs, "datasets": args.datasets, "classes": args.classes, "seeds": args.seeds}

    def run(config: str, dataset: str, normal_class: int, seed: int) -> dict[str, float]:
        flags = (
            f"--data.dataset={dataset}",
            f"--data.normal_classes=[{normal_class}]",
            f"--seed_everything={seed}",
        )
        return fit_and_test(config, args, *flags)[0]

    state = protocol.sweep(args.out, settings, {**plan, "data_dir": args.data_dir}, run, fresh=args.fresh)
    datasets = [name for name in protocol.DATASETS if any(f"|{name}|" in key for key in state["runs"])]
    tables = [f"## {dataset}\n\n{protocol.table(state, dataset)}\n" for dataset in datasets]
    args.out.with_suffix(".md").write_text("\n".join(tables))
    print("\n".join(tables))
    return state


def features(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name in args.models:
        metrics, seconds = fit_and_test(FEATURE_MODELS[name], args)
        results[name] = {**metrics, "seconds": seconds}
        print(name, results[name], flush=True)
    datamodule = MNISTDataModule(data_dir=args.data_dir, val_size=args.val_size)
    datamodule.setup("fit")
    train, test = flat_images(datamodule, "train"), flat_images(datamodule, "test")
    mean, basis = pca(train, args.components)
    train_z, test_z = (train - mean) @ basis, (test - mean) @ basis
    train_y, test_y = datamodule.datasets["train"].labels, datamodule.datasets["test"].labels
    results[f"PCA-{args.components}"] = {
        "test/linear_probe_acc": linear_probe_accuracy(train_z, train_y, test_z, test_y),
        "test/knn_acc": knn_accuracy(train_z, train_y, test_z, test_y, k=5),
    }
    print(f"PCA-{args.components}", results[f"PCA-{args.components}"], flush=True)
    return results


def nll(args: argparse.Namespace) -> dict[str, Any]:
    metrics, seconds = fit_and_test("vae_bernoulli.yaml", args, f"--model.nll_samples={args.nll_samples}")
    print(metrics, flush=True)
    return {"VAE (Bernoulli)": {**metrics, "seconds": seconds, "nll_samples": args.nll_samples}}


def main_benchmark() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("part", choices=("one_class", "features", "nll"))
    parser.add_argument("--data-dir", default="data", help="folder holding MNIST/raw/")
    parser.add_argument(
        "--epochs", type=int, default=None, help="epochs per fit (default: one_class the config's, else 20)"
    )
    parser.add_argument("--components", type=int, default=20, help="PCA components (the latent size)")
    parser.add_argument("--nll-samples", type=int, default=1000)
    parser.add_argument(
        "--models", nargs="+", default=list(MODELS), choices=list(FEATURE_MODELS), help="for features"
    )
    parser.add_argument("--configs", nargs="+", default=["one_class.yaml"], help="one_class: configs/ files")
    parser.add_argument("--datasets", nargs="+", default=list(protocol.DATASETS), choices=protocol.DATASETS)
    parser.add_argument("--classes", nargs="+", type=int, default=list(range(10)), help="one_class: classes")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="one_class: seeds")
    parser.add_argument("--fresh", action="store_true", help="one_class: start again, not resume --out")
    parser.add_argument("--val-size", type=int, default=5000, help="as --data.val_size (the configs': 5000)")
    parser.add_argument(
        "--extra",
        action="append",
        default=[],
        help="a cli.py flag for every fit, repeatable: --extra=--model.steps_per_call=16",
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default benchmarks/results/)")
    args = parser.parse_args()
    args.data_dir = str(Path(args.data_dir).resolve())
    out = args.out = (args.out or REPO / "benchmarks" / "results" / f"{args.part}.json").resolve()
    if args.part != "one_class" and args.epochs is None:
        args.epochs = 20
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:  # the runs' folders, thrown away
        os.chdir(folder)
        results = {"one_class": one_class, "features": features, "nll": nll}[args.part](args)
    if args.part == "one_class":  # the sweep's file is its report, written after every run
        print(f"written {out} and {out.with_suffix('.md')}")
        return
    report = {
        "part": args.part,
        "epochs": args.epochs,
        "components": args.components,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "threads": torch.get_num_threads(),
        "extra": args.extra,
        "total_seconds": time.perf_counter() - start,
        "results": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"written {out}")


if __name__ == "__main__":
    main_benchmark()
