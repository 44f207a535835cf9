"""Every model of the framework on MNIST under one protocol, through the real CLI: one table.

    python benchmarks/zoo.py --data-dir ../shared/data --epochs 10
    python benchmarks/zoo.py --data-dir ../shared/data --epochs 10 --binarized

  (default)    every model (ae_lightning.models), with its config's objective and likelihood but this
               project's conv backbone (stride-2 convolutions of 32 and 64 channels), latent 16, the default
               optimizer (fused Adam, lr 1e-3) and --epochs: test/mse, test/nll (k = --nll-samples, where
               the model reports a likelihood), test/fid, test/precision, test/recall (evaluation.Generation,
               where it generates), test/knn_acc and test/linear_probe_acc of the codes, seconds per epoch of
               the fit (validation included) and of fit and test together, the peak memory of the process
               (RSS on a CPU, allocated on a GPU).
  --binarized  VAE, VampVAE, IWAE and HVAE with their MLP configs on statically binarised MNIST (one seeded
               draw, kept: --data.binarize static), test/nll beside pythae's published numbers (approximate:
               not Larochelle's fixed files, and far fewer epochs than the papers).

  --samplers   after the test, the FID (10,000 samples against the test split, `sample --fid true`) of each
               post-hoc sampler the model can use (ae_lightning.samplers; `--samplers none` skips them, or
               name some): a second table, one column per sampler.

Each model runs in a process of its own (its peak memory is its own), and the JSON (benchmarks/results/
zoo.json or zoo_binarized.json, or --out) is written after each: a sweep stopped half-way resumes where it
stopped. The table is printed as markdown at the end.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import typing
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: the config of each model (its objective, arguments and likelihood; the protocol overrides the networks)
CONFIGS = {
    "AE": "ae.yaml",
    "DenoisingAE": "dae.yaml",
    "RestorationAE": "restoration_ae.yaml",
    "MemAE": "memae.yaml",
    "DeepSVDD": "deep_svdd.yaml",
    "SparseAE": "sparse_ae.yaml",
    "ContractiveAE": "contractive_ae.yaml",
    "VAE": "vae.yaml",
    "ConditionalVAE": "cvae.yaml",
    "IWAE": "iwae.yaml",
    "VQVAE": "vqvae.yaml",
    "WAE": "wae.yaml",
    "InfoVAE": "info_vae.yaml",
    "RAE": "rae.yaml",
    "DisentangledBetaVAE": "disentangled_beta_vae.yaml",
    "BetaTCVAE": "beta_tc_vae.yaml",
    "MSSSIMVAE": "msssim_vae.yaml",
    "VampVAE": "vamp_vae.yaml",
    "MIWAE": "miwae.yaml",
    "CIWAE": "ciwae.yaml",
    "HVAE": "hvae.yaml",
    "RHVAE": "rhvae.yaml",
    "PlanarFlowVAE": "planar_flow_vae.yaml",
    "IAFVAE": "iaf_vae.yaml",
    "SVAE": "svae.yaml",
    "PoincareVAE": "poincare_vae.yaml",
    "HRQVAE": "hrqvae.yaml",
    "FactorVAE": "factor_vae.yaml",
    "AdversarialAE": "adversarial_ae.yaml",
    "PIWAE": "piwae.yaml",
    "VAEGAN": "vaegan.yaml",
}
PROTOCOL = ["--model.backbone=conv", "--model.hidden_dims=[32, 64]", "--model.latent_dim=16"]
#: statically binarised MNIST, test NLL in nats: (pythae's benchmark, the paper)
PYTHAE_BINARIZED = {
    "VAE": (89.78, 89.9),
    "VampVAE": (85.79, 85.57),
    "IWAE": (86.82, 87.1),
    "HVAE": (86.21, 86.40),
}
BINARIZED_CONFIGS = {
    "VAE": "vae_bernoulli.yaml",
    "VampVAE": "vamp_vae.yaml",
    "IWAE": "iwae.yaml",
    "HVAE": "hvae.yaml",
}
COLUMNS = [
    ("test/mse", "MSE", 4),
    ("test/nll", "NLL", 2),
    ("test/fid", "FID", 2),
    ("test/precision", "prec.", 3),
    ("test/recall", "recall", 3),
    ("test/knn_acc", "kNN", 3),
    ("test/linear_probe_acc", "probe", 3),
    ("fit_seconds_per_epoch", "fit s/epoch", 1),
    ("seconds", "fit+test s", 0),
    ("peak_mb", "peak MB", 0),
]


def reports_likelihood(name: str) -> bool:
    """Whether the model declares a likelihood (it then takes --model.nll_samples)."""
    import ae_lightning.models
    from ae_lightning.autoencoders import LogLikelihood

    module = getattr(ae_lightning.models, name)
    return issubclass(typing.get_type_hints(module.build_autoencoder)["return"], LogLikelihood)


def peak_memory_mb() -> float:
    """The process's peak: allocated on a GPU, resident on a CPU (VmHWM)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def sampler_fids(name: str, config: str, args: argparse.Namespace, extra: list[str]) -> dict[str, float]:
    """The FID of 10,000 samples of each sampler in `args.samplers` that the model just fitted (in this
    folder) can use, through `cli.py sample --fid true`; the seconds each took beside."""
    import ae_lightning.models
    from ae_lightning.cli import main as cli_main
    from ae_lightning.samplers import SAMPLERS
    from benchmarks.evaluation import cli_args

    (last,) = Path("runs").glob("*/version_0/checkpoints/last.ckpt")
    model = getattr(ae_lightning.models, name).load_from_checkpoint(last, map_location="cpu").model
    fids = {}
    for sampler in args.samplers:
        if SAMPLERS[sampler].refusal(model) is not None:
            continue
        start = time.perf_counter()
        command = ["sample", *cli_args(config, args, *extra), f"--ckpt_path={last}", f"--sampler={sampler}",
                   "--num_samples=10000", "--fid=true", f"--output=samples_{sampler}"]  # fmt: skip
        cli_main(command)
        report = json.loads(Path(f"samples_{sampler}/sample.json").read_text())
        fids[f"fid_{sampler}"] = report["generation"]["fid"]
        fids[f"seconds_{sampler}"] = time.perf_counter() - start
    return fids


def run_one(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Fits and tests one model in this process; its numbers."""
    from benchmarks.evaluation import fit_and_test

    config = (BINARIZED_CONFIGS if args.binarized else CONFIGS)[name]
    extra = ["--data.binarize=static"] if args.binarized else PROTOCOL
    if reports_likelihood(name):
        extra = [*extra, f"--model.nll_samples={args.nll_samples}"]
    with tempfile.TemporaryDirectory() as folder:  # the run's folder, thrown away
        os.chdir(folder)
        metrics, seconds = fit_and_test(config, args, *extra)
        metrics |= sampler_fids(name, config, args, extra)
    return {
        **metrics,
        "seconds": seconds,
        "fit_seconds_per_epoch": metrics["fit_seconds"] / args.epochs,
        "peak_mb": peak_memory_mb(),
    }


def sampler_table(results: dict[str, dict[str, Any]], samplers: list[str]) -> str:
    """The FID of each sampler a model can use (— where it cannot, or was not run), as markdown."""
    lines = ["| model | " + " | ".join(samplers) + " |", "| --- " * (len(samplers) + 1) + "|"]
    for name, row in results.items():
        cells = [f"{row[f'fid_{s}']:.2f}" if f"fid_{s}" in row else "—" for s in samplers]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table(results: dict[str, dict[str, Any]], binarized: bool) -> str:
    """The results as markdown, pythae's numbers beside the binarised NLLs."""
    columns = COLUMNS + ([("pythae", "pythae", 2), ("paper", "paper", 2)] if binarized else [])
    lines = [
        "| model | " + " | ".join(title for _, title, _ in columns) + " |",
        "| --- " * (len(columns) + 1) + "|",
    ]
    for name, row in results.items():
        if binarized and name in PYTHAE_BINARIZED:
            row = {**row, "pythae": PYTHAE_BINARIZED[name][0], "paper": PYTHAE_BINARIZED[name][1]}
        cells = [
            f"{row[key]:.{digits}f}" if isinstance(row.get(key), int | float) else "—"
            for key, _, digits in columns
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", default="data", help="folder holding MNIST/raw/")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--nll-samples", type=int, default=1000, help="k of test/nll")
    parser.add_argument("--val-size", type=int, default=5000, help="as --data.val_size")
    parser.add_argument("--binarized", action="store_true", help="the statically binarised NLL comparison")
    parser.add_argument("--models", nargs="+", default=None, help="these models only (default: all)")
    parser.add_argument(
        "--extra", action="append", default=[], help="a cli.py flag for every fit, repeatable"
    )
    parser.add_argument(
        "--samplers", nargs="+", default=None, help="the samplers measured (default: all; `none`: no sampler)"
    )
    parser.add_argument("--out", type=Path, default=None, help="the JSON (default benchmarks/results/)")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # a child process: one model, JSON out
    args = parser.parse_args()
    args.data_dir = str(Path(args.data_dir).resolve())
    from ae_lightning.samplers import SAMPLERS

    args.samplers = [] if args.samplers == ["none"] else (args.samplers or list(SAMPLERS))
    unknown = sorted(set(args.samplers) - set(SAMPLERS))
    if unknown:
        sys.exit(f"error: --samplers {unknown}: no such sampler; choose from {list(SAMPLERS)} or none")
    if args.one is not None:
        print("ZOO " + json.dumps(run_one(args.one, args)), flush=True)
        return
    names = args.models or list(BINARIZED_CONFIGS if args.binarized else CONFIGS)
    out = args.out or REPO / "benchmarks" / "results" / (
        "zoo_binarized.json" if args.binarized else "zoo.json"
    )
    report = json.loads(out.read_text()) if out.is_file() else {"results": {}}
    settings = {"epochs": args.epochs, "nll_samples": args.nll_samples}
    if report["results"] and {key: report.get(key) for key in settings} != settings:
        sys.exit(
            f"error: {out} holds a sweep of {report.get('epochs')} epochs, k = {report.get('nll_samples')}: "
            "give --out another file for other settings (or delete it to start again)"
        )
    report.update(
        epochs=args.epochs,
        nll_samples=args.nll_samples,
        binarized=args.binarized,
        extra=args.extra,
        machine=f"{platform.machine()}, {os.cpu_count()} CPUs",
        protocol=[] if args.binarized else PROTOCOL,
    )
    for index, name in enumerate(names, 1):
        if name in report["results"]:
            print(f"[{index}/{len(names)}] {name}: done before, kept", flush=True)
            continue
        print(f"[{index}/{len(names)}] {name} ...", flush=True)
        start = time.perf_counter()
        child = [
            sys.executable,
            __file__,
            "--one",
            name,
            f"--data-dir={args.data_dir}",
            f"--epochs={args.epochs}",
            f"--nll-samples={args.nll_samples}",
            f"--val-size={args.val_size}",
            *(["--binarized"] if args.binarized else []),
            *[f"--extra={flag}" for flag in args.extra],
            "--samplers",
            *(args.samplers or ["none"]),
        ]
        done = subprocess.run(child, capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("ZOO ")]
        if done.returncode != 0 or not lines:
            print(f"  failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}", flush=True)
            continue
        report["results"][name] = json.loads(lines[-1].removeprefix("ZOO "))
        print(f"  {time.perf_counter() - start:.0f} s", flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
    print(table(report["results"], args.binarized))
    if args.samplers:
        print(sampler_table(report["results"], args.samplers))
    print(f"written {out}")


if __name__ == "__main__":
    main()
