"""The command line, driven through its real entry point with argument lists, as a user types them."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from ae_lightning.autoencoders import Generative
from ae_lightning.cli import main
from ae_lightning.models import DenoisingAE
from tests.conftest import (
    CONFIGS,
    NUM_TEST,
    REPO,
    grid_size,
    linear_shapes,
    read_png,
    run_folder,
    tiny,
)
from tests.variants import modules

RUNNABLE = ("ae", "dae", "vae")


@pytest.mark.parametrize("name", RUNNABLE)
def test_config_fits_then_tests_and_predicts_from_its_checkpoint(
    name: str, data_dir: Path, in_tmp: Path
) -> None:
    config = str(CONFIGS / f"{name}.yaml")
    fitted = main(["fit", "--config", config, *tiny(data_dir)])

    run = run_folder(in_tmp, name)
    saved = yaml.safe_load((run / "config.yaml").read_text())  # the resolved config, in the run folder
    assert saved["model"]["class_path"] == yaml.safe_load(Path(config).read_text())["model"]["class_path"]
    assert saved["data"]["init_args"]["data_dir"] == str(data_dir)
    ckpts = sorted((run / "checkpoints").glob("*.ckpt"))
    assert [p.name for p in ckpts] == [
        f"epoch=0-step=5-val_loss={fitted.trainer.callback_metrics['val/loss']:.2f}.ckpt",
        "last.ckpt",
    ]
    model = fitted.model
    generative = isinstance(model.model, Generative)
    # 16 images in rows of 8 over their reconstructions (and corrupted copies), 32 samples for the VAE
    size = grid_size(16, samples=32 if generative else 0, rows_per_image=4 if name == "dae" else 2)
    for ckpt in ckpts:
        assert read_png(ckpt.with_suffix(".png")).shape == (3, *size)
    for metric in ("train/loss", "val/loss", "val/recon") + (("val/kl",) if generative else ()):
        assert torch.isfinite(fitted.trainer.logged_metrics[metric])

    # a reloaded checkpoint gives the same outputs
    reloaded = type(model).load_from_checkpoint(ckpts[-1])
    x = fitted.datamodule.datasets["val"][torch.arange(8)].inputs
    torch.testing.assert_close(reloaded.eval()(x), model.eval()(x))

    tested = main(["test", "--config", config, *tiny(data_dir), "--ckpt_path", str(ckpts[-1])])
    metrics = tested.trainer.callback_metrics
    assert {"test/loss", "test/recon"} <= set(metrics)
    if generative:  # the samples' FID, precision and recall, one sample per test image
        assert (
            metrics["test/fid"] >= 0
            and 0 <= metrics["test/precision"] <= 1
            and 0 <= metrics["test/recall"] <= 1
        )
    if name != "vae":  # deterministic models: the CLI's test loss is that of the checkpoint's weights
        with torch.no_grad():
            recon = [
                reloaded.model.eval().loss_terms(b)["recon"] for b in fitted.datamodule.test_dataloader()
            ]
        torch.testing.assert_close(metrics["test/recon"], torch.cat(recon).mean())

    predicted = main(["predict", "--config", config, *tiny(data_dir), "--ckpt_path", str(ckpts[-1])])
    batches = predicted.trainer.predict_loop.predictions
    latents = torch.cat([batch["latent"] for batch in batches])
    scores = torch.cat([batch["anomaly_score"] for batch in batches])
    assert latents.shape == (NUM_TEST, model.model.latent_dim) and scores.shape == (NUM_TEST,)
    assert torch.equal(
        torch.cat([batch["labels"] for batch in batches]), fitted.datamodule.datasets["test"].labels
    )


def test_reference_vae_config_builds_the_reference_model(data_dir: Path, in_tmp: Path) -> None:
    """configs/vae.yaml: 784-400-(20 mu, 20 logvar), 20-400-784 tanh, data in [-1, 1], Adam 1e-3,
    batch 128."""
    cli = main(["--config", str(CONFIGS / "vae.yaml")], run=False)
    model, datamodule = cli.model, cli.datamodule
    assert linear_shapes(model.model.encoder) == [(784, 400), (400, 40)]  # the last layer: mu and logvar
    assert linear_shapes(model.model.decoder) == [(20, 400), (400, 784)]
    assert sum(p.numel() for p in model.parameters()) == 652_824  # as pytorch/examples' VAE
    assert model.model.value_range == datamodule.value_range == (-1.0, 1.0)
    assert model.model.likelihood == "gaussian" and model.model.beta == 1.0
    torch.testing.assert_close(
        model.model.output_mean(torch.tensor([-30.0, 0.0, 30.0])), torch.tensor([-1.0, 0.0, 1.0])
    )
    optimizer = model.configure_optimizers()
    assert type(optimizer) is torch.optim.Adam and optimizer.defaults["lr"] == 1e-3
    assert datamodule.batch_size == 128 and datamodule.hparams.dataset == "MNIST"


# configs/sweeps/ holds W&B sweep specs (for `wandb sweep`), not cli.py configs: tests/test_wandb.py runs them
CLI_CONFIGS = sorted(
    path for path in CONFIGS.rglob("*.yaml") if "sweeps" not in path.relative_to(CONFIGS).parts
)


@pytest.mark.parametrize("config", CLI_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_config_parses(config: Path, capsys: pytest.CaptureFixture) -> None:
    """Runnable configs parse alone; fragments in sub-folders parse on top of vae.yaml."""
    base = [] if config.parent == CONFIGS else ["--config", str(CONFIGS / "vae.yaml")]
    with pytest.raises(SystemExit) as done:
        main(["fit", *base, "--config", str(config), "--print_config"])
    assert done.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"].startswith("ae_lightning.models.")


@pytest.mark.parametrize("config", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_model_configs_say_only_what_is_their_own(config: Path, in_tmp: Path) -> None:
    """Each model config includes the shared base (trainer, logger, callbacks, MNIST) and stays short; its
    runs go to runs/<config name>/."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    text = config.read_text()
    assert re.search(r"^config: base/(mnist|trainer)\.yaml", text, re.M) and len(text.splitlines()) <= 40
    assert "trainer:\n" not in text  # the trainer block is the base's; a config changes single keys
    cli = main(["--config", str(config)], run=False)
    assert cli.trainer.logger.name == config.stem
    assert any(isinstance(callback, ModelCheckpoint) for callback in cli.trainer.callbacks)
    assert cli.trainer.max_epochs >= 10 and cli.config.seed_everything == 42


#: the variant configs, each with metrics of its own that a fit must log
VARIANT_CONFIGS = {
    "sparse_ae": ("val/sparsity", "val/mean_activation"),
    "contractive_ae": ("val/jacobian_penalty",),
    "beta_vae": ("train/kl_weight", "val/kl", "val/kl_dim/0", "val/kl_dim/9", "val/active_units"),
    "cvae": ("val/kl", "val/active_units"),
    "iwae": ("val/bound", "val/active_units"),
    "vqvae": ("val/commitment", "train/perplexity", "train/codes_used", "val/perplexity", "val/codes_used"),
    "vae_conv": ("val/kl", "val/active_units"),
    "vqvae_conv": ("val/commitment", "val/perplexity", "val/codes_used"),
    "dae_features": ("val/recon_corrupted",),
}


@pytest.mark.parametrize("name", VARIANT_CONFIGS)
def test_variant_config_fits_and_writes_grids(name: str, data_dir: Path, in_tmp: Path) -> None:
    """Each variant's config runs alone on a few batches: its own metrics are logged, its grids written."""
    fitted = main(["fit", "--config", str(CONFIGS / f"{name}.yaml"), *tiny(data_dir),
                   "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1"])  # fmt: skip
    metrics = fitted.trainer.logged_metrics
    for metric in ("train/loss", "val/loss", "val/recon", *VARIANT_CONFIGS[name]):
        assert torch.isfinite(metrics[metric]), metric
    model = fitted.model
    # the conditional VAE shows a row of 8 per class; the other VAEs 32 samples; the rest none
    samples = 10 * 8 if name == "cvae" else 32 if isinstance(model.model, Generative) else 0
    rows = 4 if isinstance(model, DenoisingAE) else 2  # the denoiser adds corrupted inputs and their outputs
    ckpts = sorted((run_folder(in_tmp, name) / "checkpoints").glob("*.ckpt"))
    assert len(ckpts) == 2  # the best and last
    for ckpt in ckpts:
        assert read_png(ckpt.with_suffix(".png")).shape == (3, *grid_size(16, samples, rows_per_image=rows))


@pytest.mark.parametrize(
    "config, flag, read",
    [
        ("sparse_ae", "--model.sparsity_penalty=l1", lambda m: m.sparsity_penalty == "l1"),
        ("sparse_ae", "--model.sparsity_weight=0.3", lambda m: m.sparsity_weight == 0.3),
        ("sparse_ae", "--model.sparsity_target=0.1", lambda m: m.sparsity_target == 0.1),
        ("contractive_ae", "--model.contractive_weight=0.5", lambda m: m.contractive_weight == 0.5),
        ("beta_vae", "--model.beta=8", lambda m: m.beta == 8.0),
        ("beta_vae", "--model.kl_warmup_steps=10", lambda m: m.kl_warmup_steps == 10),
        (
            "cvae",
            "--model.num_classes=12",
            lambda m: (
                m.num_classes == 12
                and m.decoder.net(torch.zeros(1, m.latent_dim + 12)).shape == (1, 1, 28, 28)
            ),
        ),
        ("iwae", "--model.num_samples=9", lambda m: m.num_samples == 9),
        ("vqvae", "--model.codebook_size=64", lambda m: m.quantizer.codebook.shape == (64, 8)),
        ("vqvae", "--model.code_dim=16", lambda m: m.quantizer.codebook.shape == (512, 16)),
        ("vqvae", "--model.commitment_cost=0.5", lambda m: m.commitment_cost == 0.5),
        ("vqvae", "--model.ema_decay=0", lambda m: isinstance(m.quantizer.codebook, torch.nn.Parameter)),
        ("vqvae", "--model.dead_code_threshold=0.1", lambda m: m.quantizer.dead_code_threshold == 0.1),
    ],
)
def test_variant_options_reach_the_model(config: str, flag: str, read, in_tmp: Path) -> None:
    cli = main(["--config", str(CONFIGS / f"{config}.yaml"), flag], run=False)
    assert read(cli.model.model)  # the torch model the module holds


def test_conditional_vae_predicts_with_the_labels(data_dir: Path, in_tmp: Path) -> None:
    """predict hands the labels of each batch to the conditional VAE, and returns them."""
    config = str(CONFIGS / "cvae.yaml")
    main(["fit", "--config", config, *tiny(data_dir), "--trainer.limit_train_batches=2"])
    ckpt = run_folder(in_tmp, "cvae") / "checkpoints" / "last.ckpt"
    predicted = main(["predict", "--config", config, *tiny(data_dir), "--ckpt_path", str(ckpt)])
    batches = predicted.trainer.predict_loop.predictions
    assert torch.cat([batch["latent"] for batch in batches]).shape == (
        NUM_TEST,
        predicted.model.model.latent_dim,
    )
    assert torch.isfinite(torch.cat([batch["anomaly_score"] for batch in batches])).all()
    assert torch.equal(
        torch.cat([batch["labels"] for batch in batches]), predicted.datamodule.datasets["test"].labels
    )


@pytest.mark.parametrize(
    "config, flag, message",
    [
        ("sparse_ae", "--model.sparsity_target=0", r"sparsity_target must be a mean activation in \(0, 1\)"),
        ("sparse_ae", "--model.sparsity_weight=-1", "sparsity_weight must be >= 0"),
        ("contractive_ae", "--model.contractive_weight=-1", "contractive_weight must be >= 0"),
        ("beta_vae", "--model.kl_warmup_steps=-1", "kl_warmup_steps must be >= 0"),
        ("cvae", "--model.num_classes=1", "num_classes must be at least 2"),
        ("cvae", "--model.num_classes=5", r"labels must lie in \[0, 5\), but the data's run from 0 to 9"),
        ("iwae", "--model.num_samples=0", "num_samples must be at least 1"),
        ("iwae", "--model.beta=2", "IWAE has no KL weight"),
        ("vqvae", "--model.code_dim=7", "code_dim must be a positive divisor of latent_dim 64"),
        ("vqvae", "--model.ema_decay=1", r"ema_decay must be in \[0, 1\)"),
        ("vqvae", "--model.dead_code_threshold=2", r"dead_code_threshold must be in \[0, 1\)"),
        ("vqvae", "--model.commitment_cost=-0.5", "commitment_cost must be >= 0"),
        ("vqvae_conv", "--model.codebook_size=1", "codebook_size must be at least 2"),
        ("dae", "--model.noise_std=-0.1", "noise_std must be >= 0"),
        ("vae", "--model.latent_dim=0", "latent_dim must be a positive number"),
        ("ae", "--model.latent_dim=784", "AE needs latent_dim < the input size 784"),
        ("vae", "--model.likelihood=bernoulli", r"bernoulli.*data is in \[-1.0, 1.0\]"),
        ("vae", "--data.batch_size=0", "batch_size must be at least 1"),
        (
            "ae",
            "--trainer.limit_train_batches=-1",
            "--trainer: You have passed invalid value -1.0 for limit_train",
        ),
        pytest.param(
            "ae",
            "--trainer.accelerator=gpu",
            "--trainer: No supported gpu backend found!",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU"),
        ),
    ],
)
def test_bad_values_exit_with_one_clear_line_before_anything_runs(
    config: str, flag: str, message: str, data_dir: Path, in_tmp: Path
) -> None:
    with pytest.raises(SystemExit) as error:
        main(["fit", "--config", str(CONFIGS / f"{config}.yaml"), *tiny(data_dir), flag])
    assert str(error.value.code).startswith("error: ")
    assert re.search(message, str(error.value.code))
    assert not (in_tmp / "runs").exists()  # nothing was started or written


#: what the tip lists: every variant the package exports, by name, after their module
MODELS = "a class of ae_lightning.models: " + ", ".join(sorted(cls.__name__ for cls in modules()))


@pytest.mark.parametrize(
    "args, error, tip",
    [
        (
            ["--model", "ae_lightning.models.VQVAE3000"],
            "--model: no class ae_lightning.models.VQVAE3000; did you mean ae_lightning.models.VQVAE?",
            f"--model takes {MODELS}",
        ),
        (
            ["--model", "VAEE"],
            "--model: no class VAEE; did you mean ae_lightning.models.VAE?",
            f"--model takes {MODELS}",
        ),
        (
            ["--model.latnt_dim", "3"],
            "--model.latnt_dim: ae_lightning.models.VAE takes no argument 'latnt_dim'; did you mean "
            "latent_dim?",
            "`python cli.py fit --model.help ae_lightning.models.VAE` lists its arguments",
        ),
        (
            ["--data.batch_sise", "3"],
            "--data.batch_sise: ae_lightning.data.MNISTDataModule takes no argument 'batch_sise'; did you "
            "mean batch_size?",
            "`python cli.py fit --data.help ae_lightning.data.MNISTDataModule` lists its arguments",
        ),
        (
            ["--model.optimizer.init_args.lrr", "0.1"],
            "--model.optimizer.lrr: torch.optim.Adam takes no argument 'lrr'; did you mean lr?",
            "`python cli.py fit --help` lists every option",
        ),
        (  # a prefix of an option is not taken for it
            ["--trainer.max_epoch", "1"],
            "unknown option --trainer.max_epoch; did you mean --trainer.max_epochs?",
            "`python cli.py fit --help` lists every option",
        ),
        (
            ["--trainer.logger", "lightning.pytorch.loggers.TensorBoardLoger"],
            "--trainer.logger: no class lightning.pytorch.loggers.TensorBoardLoger; did you mean "
            "lightning.pytorch.loggers.TensorBoardLogger?",
            None,
        ),
        (
            ["--model.backbone", "cnn"],
            "--model.backbone: cnn is not valid here, expected one of 'mlp', 'conv'",
            "`python cli.py fit --help` lists every option",
        ),
        (
            ["--trainer.max_epochs", "ten"],
            "--trainer.max_epochs: ten is not valid here, expected int",
            "`python cli.py fit --help` lists every option",
        ),
        (
            ["--config", "{tmp}/typo.yaml"],
            "unknown option --trainer.max_epoch; did you mean --trainer.max_epochs?",
            "`python cli.py fit --help` lists every option",
        ),
    ],
    ids=lambda value: value[0] if isinstance(value, list) else None,
)
def test_argument_and_config_mistakes_are_two_lines_naming_the_closest_valid_names(
    args: list[str], error: str, tip: str | None, capsys: pytest.CaptureFixture, in_tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """No usage, no nested report: the wrong key or class, the closest valid name, what to do."""
    monkeypatch.setattr(sys, "argv", ["cli.py"])  # the program name the messages show
    (in_tmp / "typo.yaml").write_text("trainer:\n  max_epoch: 3\n")
    args = [arg.replace("{tmp}", str(in_tmp)) for arg in args]
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIGS / "vae.yaml"), *args])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == f"error: {error}"
    assert len(lines) == 2 and lines[1].startswith("tip: ")
    if tip is not None:
        assert lines[1] == f"tip: {tip}"
    assert not (in_tmp / "runs").exists()


def test_a_mistake_is_two_lines_on_stderr_of_the_real_command(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "cli.py"), "fit", "--config", str(CONFIGS / "vae.yaml"),
         "--model.latent_dimm", "2"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: --model.latent_dimm: ae_lightning.models.VAE takes no argument 'latent_dimm'; did you mean "
        "latent_dim?",
        "tip: `python cli.py fit --model.help ae_lightning.models.VAE` lists its arguments",
    ]


def test_help_still_shows_the_full_usage(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--trainer.max_epochs" in out and "--nonfinite_loss.stop" in out and "--weights_only" not in out


def test_a_bad_learning_rate_is_one_line_before_anything_is_written(data_dir: Path, in_tmp: Path) -> None:
    with pytest.raises(SystemExit) as error:
        main(
            [
                "fit",
                "--config",
                str(CONFIGS / "ae.yaml"),
                *tiny(data_dir),
                "--model.optimizer.init_args.lr=-1",
            ]
        )
    assert str(error.value.code) == (
        "error: the optimizer or learning-rate scheduler refused its arguments: Invalid learning rate: -1.0; "
        "fix --model.optimizer (or --model.lr_scheduler)"
    )
    assert not (in_tmp / "runs").exists()


@pytest.fixture(scope="module")
def fitted_ckpt(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """last.ckpt of a tiny AE run (data in [0, 1]); tests must leave it as it is."""
    root = tmp_path_factory.mktemp("fitted")
    main(
        [
            "fit",
            "--config",
            str(CONFIGS / "ae.yaml"),
            *tiny(data_dir),
            f"--trainer.logger.init_args.save_dir={root}",
        ]
    )
    return root / "ae" / "version_0" / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize(
    "make_ckpt, message",
    [
        (lambda good, tmp: tmp / "missing.ckpt", "no such file"),
        (lambda good, tmp: tmp, "no such file \\(it is a folder\\)"),
        (
            lambda good, tmp: _write(tmp / "cut.ckpt", good.read_bytes()[:4000]),
            "not the zip archive torch.save writes",
        ),
        (lambda good, tmp: _write(tmp / "junk.ckpt", b"hello"), "not the zip archive torch.save writes"),
        (lambda good, tmp: _save(tmp / "weights.pt", {"w": torch.ones(2)}), "not a Lightning checkpoint"),
    ],
    ids=["missing", "folder", "truncated", "junk", "not-lightning"],
)
@pytest.mark.parametrize("subcommand", ["fit", "test"])
def test_bad_checkpoint_path_is_refused_before_anything_runs(
    subcommand: str, make_ckpt, message: str, fitted_ckpt: Path, data_dir: Path, in_tmp: Path
) -> None:
    bad = make_ckpt(fitted_ckpt, in_tmp)
    before = fitted_ckpt.read_bytes()
    with pytest.raises(SystemExit) as error:
        main([subcommand, "--config", str(CONFIGS / "ae.yaml"), *tiny(data_dir), "--ckpt_path", str(bad)])
    assert re.search(message, str(error.value.code))
    assert str(bad) in str(error.value.code)
    assert not (in_tmp / "runs").exists()
    assert fitted_ckpt.read_bytes() == before


@pytest.mark.parametrize("subcommand", ["test", "predict"])
def test_a_checkpoint_trained_on_another_value_range_is_refused(
    subcommand: str, fitted_ckpt: Path, data_dir: Path, in_tmp: Path
) -> None:
    """The AE learnt [0, 1] data with a sigmoid output; [-1, 1] data would load the weights under tanh."""
    args = [
        subcommand,
        "--config",
        str(CONFIGS / "ae.yaml"),
        *tiny(data_dir),
        "--ckpt_path",
        str(fitted_ckpt),
    ]
    with pytest.raises(SystemExit) as error:
        main([*args, "--data.value_range=[-1, 1]"])
    assert (
        "trained on data with value_range [0.0, 1.0], but this run's data has [-1.0, 1.0]" in error.value.code
    )
    assert "--data.value_range" in error.value.code
    assert not (in_tmp / "runs").exists()  # the run folder it had made is gone


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _save(path: Path, obj: object) -> Path:
    torch.save(obj, path)
    return path


@pytest.mark.slow
def test_missing_data_is_one_clear_error_from_the_real_command(tmp_path: Path) -> None:
    """`python cli.py fit` as a user runs it, offline with no data: exit 1, one message, no traceback."""
    result = subprocess.run(
        [sys.executable, str(REPO / "cli.py"), "fit", "--config", str(CONFIGS / "vae.yaml"),
         "--data.data_dir", str(tmp_path / "data"), "--data.download", "false"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: MNIST files are missing from " + str(tmp_path / "data" / "MNIST" / "raw"))
    assert "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz" in error


def test_the_offline_recipe_trains_from_the_four_archives(data_dir: Path, in_tmp: Path) -> None:
    """README, Data: the four .gz files in <data_dir>/MNIST/raw/ and --data.download false."""
    from tests.test_data import archives_only

    root = archives_only(data_dir, in_tmp / "data")
    fitted = main(["fit", "--config", str(CONFIGS / "ae.yaml"), *tiny(root), "--data.download=false"])
    assert fitted.trainer.global_step == 5


@pytest.mark.slow
def test_the_real_commands_print_no_tips_and_no_dirpath_warnings(data_dir: Path, tmp_path: Path) -> None:
    """fit, then test / validate / predict from its checkpoint, as a user runs them (warnings shown): no
    advert for Lightning's cloud logger, no warning that the evaluation's folder differs from the fit's."""
    config = ["--config", str(CONFIGS / "ae.yaml"), *tiny(data_dir)]
    outputs = []
    for subcommand in ("fit", "test", "validate", "predict"):
        extra = [] if subcommand == "fit" else ["--ckpt_path", "last"]
        result = subprocess.run(
            [sys.executable, str(REPO / "cli.py"), subcommand, *config, *extra],
            cwd=tmp_path, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        outputs.append(result.stdout + result.stderr)
    for output in outputs:
        assert "litlogger" not in output and "dirpath has changed" not in output, output[-3000:]


@pytest.mark.slow
def test_the_console_script_is_cli_py_and_help_lists_score(data_dir: Path, in_tmp: Path) -> None:
    """`ae-lightning` (pyproject's console script) behaves as `python cli.py`: the same help, naming `score`
    too, and the same commands (a fit, and a score that needs no Lightning)."""
    import shutil
    import subprocess
    import sys

    script = Path(sys.executable).parent / "ae-lightning"
    assert script.is_file() or shutil.which("ae-lightning"), "pip install -e . makes the console script"
    script = script if script.is_file() else Path(shutil.which("ae-lightning"))

    def help_of(command: list[str]) -> str:
        done = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    by_script, by_file = help_of([str(script)]), help_of([sys.executable, str(REPO / "cli.py")])
    assert by_script.replace("ae-lightning", "cli.py") == by_file
    assert "score: anomaly scores of images" in by_file
    assert "{fit,validate,test,predict,export,sample}" in by_file
    assert "--model MODEL --input INPUT" in help_of([str(script), "score"])
    fitted = subprocess.run([str(script), "fit", "--config", str(CONFIGS / "ae.yaml"), *tiny(data_dir)],
                            capture_output=True, text=True, timeout=300, cwd=in_tmp)  # fmt: skip
    assert fitted.returncode == 0, fitted.stderr[-2000:]
    assert (run_folder(in_tmp, "ae") / "checkpoints" / "last.ckpt").is_file()


#: what every config resolved to (`fit --print_config`) before the configs were cut to what is their own
#: (written by the code of that commit; regenerate only for a change meant to alter what configs resolve to)
RESOLVED_BEFORE = json.loads((Path(__file__).parent / "resolved_configs.json").read_text())


def _flatten(value: object, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flatten(item, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): value}


def _callback_names(callbacks: list[dict]) -> list[str]:
    return [callback["class_path"].rpartition(".")[2] for callback in callbacks]


@pytest.mark.parametrize("config", sorted(RESOLVED_BEFORE))
def test_every_config_resolves_to_what_it_did_before_it_said_only_its_own(
    config: str, capsys: pytest.CaptureFixture, in_tmp: Path
) -> None:
    """The optimizer is written once (the module's default, fused Adam, lr 1e-3; a config sets only its
    learning rate) and the test callbacks once (the base); every config still resolves to the same values,
    apart from the callback list: where a config had left some out, they are there and do nothing."""
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(CONFIGS / f"{config}.yaml"), "--print_config"])
    now = yaml.safe_load(capsys.readouterr().out)
    before = RESOLVED_BEFORE[config]
    changed = {
        key
        for key in set(_flatten(now)) | set(_flatten(before))
        if _flatten(now).get(key) != _flatten(before).get(key)
    }
    assert {key for key in changed if not key.startswith("trainer.callbacks")} == set()
    assert _callback_names(now["trainer"]["callbacks"]) == [
        "SampleGridCheckpoint", "FeatureQuality", "TestPictures", "ManifoldReport",
    ]  # fmt: skip
    if _callback_names(before["trainer"]["callbacks"]) == _callback_names(now["trainer"]["callbacks"][:3]):
        assert (
            now["trainer"]["callbacks"][:3] == before["trainer"]["callbacks"]
        )  # the configs that listed none


def test_the_configs_write_the_optimizer_and_the_callbacks_once() -> None:
    """The default optimizer is the module's; a config names a class only for a part of a model with several
    optimizers (`optimizers:`, the last key of a model's arguments), whose optimizer is its own."""
    texts = {path.name: path.read_text().partition("    optimizers:")[0] for path in CONFIGS.rglob("*.yaml")}
    assert not [name for name, text in texts.items() if "torch.optim.Adam" in text]
    assert [name for name, text in texts.items() if "trainer.callbacks" in text or "callbacks:" in text] == [
        "trainer.yaml"
    ]
