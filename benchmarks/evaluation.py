"""What trained autoencoders are worth, measured through the real CLI: one-class anomaly detection, feature
quality and the Bernoulli VAE's test NLL, with PCA baselines.

    python benchmarks/evaluation.py --data-dir ../shared/data one_class --epochs 20
    python benchmarks/evaluation.py --data-dir ../shared/data features --epochs 15
    python benchmarks/evaluation.py --data-dir ../shared/data nll --epochs 30

  one_class  for each model (AE, DAE, VAE: configs/ae.yaml, dae.yaml, vae.yaml) and each digit d = 0..9:
             `fit --data.normal_classes [d]`, then `test` of the last weights: test/auroc, test/aupr, test/f1
             over the whole test set (anomaly = not d); PCA with as many components as the latent size,
             fitted on the same normal training images, scored by its reconstruction error.
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

import torch
from torchmetrics.classification import BinaryAUROC

from ae_lightning.cli import main
from ae_lightning.data import MNISTDataModule
from ae_lightning.evaluation.features import knn_accuracy, linear_probe_accuracy
from ae_lightning.evaluation.one_class import squash

REPO = Path(__file__).resolve().parents[1]
MODELS = {"AE": "ae.yaml", "DAE": "dae.yaml", "VAE": "vae.yaml"}
#: further configs `features` can measure (--models)
FEATURE_MODELS = {**MODELS, "DAE-features": "dae_features.yaml"}


def cli_args(config: str, args: argparse.Namespace, *extra: str) -> list[str]:
    return [
        "--config", str(REPO / "configs" / config),
        f"--data.data_dir={args.data_dir}",
        f"--trainer.max_epochs={args.epochs}",
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
    results: dict[str, Any] = {name: {} for name in [*MODELS, f"PCA-{args.components}"]}
    for digit in range(10):
        datamodule = MNISTDataModule(data_dir=args.data_dir, val_size=args.val_size, normal_classes=[digit])
        datamodule.setup("fit")
        train, test = flat_images(datamodule, "train"), flat_images(datamodule, "test")
        mean, basis = pca(train, args.components)
        centred = test - mean
        errors = (centred - centred @ basis @ basis.T).square().sum(1)
        auroc = BinaryAUROC()(squash(errors), datamodule.datasets["test"].gt_anomaly.long()).item()
        results[f"PCA-{args.components}"][str(digit)] = {"test/auroc": auroc}
        print(f"digit {digit} PCA-{args.components}: AUROC {auroc:.4f}", flush=True)
        for name, config in MODELS.items():
            metrics, seconds = fit_and_test(config, args, f"--data.normal_classes=[{digit}]")
            results[name][str(digit)] = {**metrics, "seconds": seconds}
            print(f"digit {digit} {name}: AUROC {metrics['test/auroc']:.4f} ({seconds:.0f} s)", flush=True)
    for per_digit in results.values():
        aurocs = [per_digit[str(digit)]["test/auroc"] for digit in range(10)]
        per_digit["mean_auroc"] = sum(aurocs) / len(aurocs)
    return results


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
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--components", type=int, default=20, help="PCA components (the latent size)")
    parser.add_argument("--nll-samples", type=int, default=1000)
    parser.add_argument(
        "--models", nargs="+", default=list(MODELS), choices=list(FEATURE_MODELS), help="for features"
    )
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
    out = args.out or REPO / "benchmarks" / "results" / f"{args.part}.json"
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:  # the runs' folders, thrown away
        os.chdir(folder)
        results = {"one_class": one_class, "features": features, "nll": nll}[args.part](args)
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
