"""The one-class protocol of `evaluation.py one_class`: a resumable sweep of configs x data sets x classes x
seeds through the real CLI, and its per-class table beside the published numbers.

Each run fits a config with `--data.normal_classes [c]` (train and validation: class c only) and
`--seed_everything s`, then tests its last weights on the whole test set (anomaly = any other class). After
every run the JSON file is rewritten (a temporary file, then a rename), so a sweep stopped at any point goes
on where it stopped when started again with the same settings.
"""

import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torchmetrics.classification import BinaryAUROC

from ae_lightning.data import MNISTDataModule
from ae_lightning.evaluation.one_class import squash

#: mean AUROC over the 10 classes reported by autoencoder-based (and one geometric) one-class methods, under
#: the same protocol: (method, source, MNIST, Fashion-MNIST)
PUBLISHED: list[tuple[str, str, float | None, float | None]] = [
    ("DCAE", "Ruff et al. 2018, Table 1", 0.897, None),
    ("Deep SVDD", "Ruff et al. 2018, Table 1; F-MNIST as tabulated by Ye et al. 2020", 0.948, 0.892),
    ("MemAE", "Gong et al. 2019, Table 1", 0.975, None),
    ("OCGAN", "Perera et al. 2019, Table 2", 0.975, None),
    ("GeoTrans (not an AE)", "Golan & El-Yaniv 2018; F-MNIST as tabulated by Ye et al. 2020", 0.980, 0.935),
    ("ARNet / ITAE", "Ye et al. 2020, Tables 1-2", 0.983, 0.939),
]
DATASETS = ("MNIST", "FashionMNIST")


def run_key(config: str, dataset: str, normal_class: int, seed: int) -> str:
    return f"{config}|{dataset}|{normal_class}|{seed}"


def load_sweep(path: Path, settings: dict[str, Any], fresh: bool) -> dict[str, Any]:
    """The sweep in `path` to go on with, or a new one; refuses (SystemExit, one line) a file written with
    other settings, which its numbers would not be comparable with."""
    if fresh or not path.is_file():
        return {"settings": settings, "runs": {}}
    sweep = json.loads(path.read_text())
    if sweep.get("settings") != settings:
        raise SystemExit(
            f"{path} holds a sweep with other settings ({sweep.get('settings')}): pass --fresh to start "
            "again, or --out another file"
        )
    return sweep


def save_sweep(path: Path, sweep: dict[str, Any]) -> None:
    """Writes `sweep` to `path` whole or not at all (a temporary file, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(path.suffix + ".partial")
    partial.write_text(json.dumps(sweep, indent=2))
    os.replace(partial, path)


def pca_auroc(data_dir: str, dataset: str, normal_class: int, val_size: int, components: int) -> float:
    """Test AUROC of PCA with `components` components fitted on the normal training images, scored by the
    squared reconstruction error: the linear baseline."""
    datamodule = MNISTDataModule(
        dataset=dataset, data_dir=data_dir, val_size=val_size, normal_classes=[normal_class]
    )
    datamodule.prepare_data()
    datamodule.setup("fit")
    train = datamodule.datasets["train"].images.flatten(1).double() / 255
    test = datamodule.datasets["test"].images.flatten(1).double() / 255
    mean = train.mean(0)
    _, _, v = torch.linalg.svd(train - mean, full_matrices=False)
    basis = v[:components].T
    centred = test - mean
    errors = (centred - centred @ basis @ basis.T).square().sum(1)
    return BinaryAUROC()(squash(errors), datamodule.datasets["test"].gt_anomaly.long()).item()


def sweep(
    path: Path,
    settings: dict[str, Any],
    plan: dict[str, list],
    fit_and_test: Callable[[str, str, int, int], dict[str, float]],
    fresh: bool = False,
) -> dict[str, Any]:
    """Runs every (config, dataset, class, seed) of `plan` not yet in `path`, saving after each, with a line
    of progress per run; `fit_and_test(config, dataset, class, seed)` gives a run's test metrics. A sweep
    may grow (more configs, classes, seeds) as long as `settings` stay those it was run with."""
    state = load_sweep(path, settings, fresh)
    state["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
    runs = state["runs"]
    todo = [
        (config, dataset, normal_class, seed)
        for config in plan["configs"]
        for dataset in plan["datasets"]
        for normal_class in plan["classes"]
        for seed in plan["seeds"]
    ]
    pca = f"PCA-{settings['components']}"
    for dataset in plan["datasets"]:
        for normal_class in plan["classes"]:
            if run_key(pca, dataset, normal_class, 0) not in runs:
                auroc = pca_auroc(
                    plan["data_dir"], dataset, normal_class, settings["val_size"], settings["components"]
                )
                runs[run_key(pca, dataset, normal_class, 0)] = {"test/auroc": auroc}
                save_sweep(path, state)
    remaining = [run for run in todo if run_key(*run) not in runs]
    print(f"{len(todo) - len(remaining)} of {len(todo)} runs done, {len(remaining)} to go", flush=True)
    start = time.perf_counter()
    for done, (config, dataset, normal_class, seed) in enumerate(remaining, 1):
        began = time.perf_counter()
        metrics = fit_and_test(config, dataset, normal_class, seed)
        seconds = time.perf_counter() - began
        runs[run_key(config, dataset, normal_class, seed)] = {**metrics, "seconds": seconds}
        save_sweep(path, state)
        left = (time.perf_counter() - start) / done * (len(remaining) - done)
        print(
            f"[{done}/{len(remaining)}] {config} {dataset} class {normal_class} seed {seed}: "
            f"AUROC {metrics['test/auroc']:.4f} ({seconds:.0f} s; ~{left / 60:.0f} min left)",
            flush=True,
        )
    return state


def summary(values: list[float]) -> str:
    """`mean` or `mean ± sample std`, in three decimals."""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def table(state: dict[str, Any], dataset: str) -> str:
    """The markdown table of one data set: each config's per-class mean ± std over seeds and the mean over
    classes (with its spread over seeds), PCA, then the published means and their sources."""
    settings, runs = state["settings"], state["runs"]
    parts = [key.split("|") for key in runs]
    configs = list(dict.fromkeys(config for config, data, _, _ in parts if data == dataset))
    classes = sorted({int(c) for _, data, c, _ in parts if data == dataset})
    seeds = sorted(
        {int(s) for config, data, _, s in parts if data == dataset and not config.startswith("PCA")}
    )
    header = ["method", "mean AUROC", *map(str, classes), "lowest class", "fit s (median)"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    pca = f"PCA-{settings['components']}"
    for config in (config for config in configs if config != pca):
        keys = {c: [run_key(config, dataset, c, s) for s in seeds] for c in classes}
        per_class = {c: [runs[key]["test/auroc"] for key in keys[c] if key in runs] for c in classes}
        if not all(per_class.values()):
            continue
        by_seed = [
            statistics.mean(runs[run_key(config, dataset, c, s)]["test/auroc"] for c in classes)
            for s in seeds
            if all(run_key(config, dataset, c, s) in runs for c in classes)
        ]
        seconds = [runs[key]["fit_seconds"] for key in runs if key.startswith(f"{config}|{dataset}|")]
        lowest = min(classes, key=lambda c: statistics.mean(per_class[c]))
        cells = [
            f"`{config}`",
            f"**{summary(by_seed)}**" if by_seed else "-",
            *(f"{statistics.mean(per_class[c]):.3f}" for c in classes),
            f"{lowest} ({statistics.mean(per_class[lowest]):.3f})",
            f"{statistics.median(seconds):.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    pca_runs = [runs.get(run_key(pca, dataset, c, 0), {}).get("test/auroc", math.nan) for c in classes]
    cells = " | ".join(f"{value:.3f}" for value in pca_runs)
    lines.append(f"| {pca} | {statistics.mean(pca_runs):.3f} | {cells} | - | - |")
    column = DATASETS.index(dataset) + 2 if dataset in DATASETS else None
    for row in PUBLISHED:
        value = row[column] if column is not None else None
        if value is not None:
            lines.append(f"| {row[0]} ({row[1]}) | {value:.3f} |" + " |" * len(classes) + " - | - |")
    return "\n".join(lines)
