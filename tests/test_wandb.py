"""Weights & Biases tracking, offline: runs read back from their files with wandb's own reader, no network."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from ae_lightning.cli import main
from ae_lightning.loggers import CONFIG_FILE_NAME, offline_reason
from tests.conftest import CONFIGS, REPO, grid_size, read_png
from tests.test_cli import tiny

WANDB_FRAGMENT = str(CONFIGS / "logger" / "wandb.yaml")
VAE = str(CONFIGS / "vae.yaml")
AE_CONFIG = str(CONFIGS / "ae.yaml")

#: every W&B variable that could point a test at a real account, server or the user's own files
_WANDB_ACCOUNT_VARS = (
    "WANDB_API_KEY",
    "WANDB_IDENTITY_TOKEN_FILE",
    "WANDB_BASE_URL",
    "WANDB_PROJECT",
    "NETRC",
)


def wandb_env(root: Path) -> dict[str, str]:
    """Environment of a W&B run kept under `root`: offline, no account, no file of the user's touched."""
    env = {key: value for key, value in os.environ.items() if key not in _WANDB_ACCOUNT_VARS}
    env.update(
        HOME=str(root / "home"),  # no ~/.netrc; the artifact staging folder
        WANDB_MODE="offline",
        WANDB_DIR=str(root / "wandb_dir"),
        WANDB_CONFIG_DIR=str(root / "home" / "wandb_config"),
        WANDB_CACHE_DIR=str(root / "home" / "wandb_cache"),
        WANDB_DATA_DIR=str(root / "home" / "wandb_data"),
        WANDB_SILENT="true",
    )
    return env


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Runs the test in an empty folder with W&B offline, its files under `tmp_path/wandb_dir`."""
    monkeypatch.chdir(tmp_path)
    for key in _WANDB_ACCOUNT_VARS:
        monkeypatch.delenv(key, raising=False)
    for key, value in wandb_env(tmp_path).items():
        if os.environ.get(key) != value:
            monkeypatch.setenv(key, value)
    return tmp_path / "wandb_dir"


def offline_runs(wandb_dir: Path) -> list[Path]:
    """The offline run folders W&B made under `wandb_dir`."""
    return sorted((wandb_dir / "wandb").glob("offline-run-*"))


def read_run(run_dir: Path) -> dict[str, Any]:
    """An offline run as W&B stored it in its `.wandb` file, read by `wandb leet inspect` (no network):
    its config, history rows, files and artifacts."""

    def inspect(*options: str) -> str:
        command = [sys.executable, "-m", "wandb", "leet", "inspect", "--json", *options, str(run_dir)]
        return subprocess.run(command, capture_output=True, text=True, check=True, timeout=60).stdout

    summary = json.loads(inspect("--summary"))
    records = [json.loads(line) for line in inspect().splitlines()]
    of_type = lambda kind: [record[kind] for record in records if record["type"] == kind]  # noqa: E731
    return {
        "state": summary["state"],
        "config": summary["config"],
        "history": [row["item"] for row in of_type("history")],
        "files": [file["path"] for files in of_type("files") for file in files["files"]],
        "artifacts": of_type("artifact"),
    }


def test_offline_run_holds_the_config_once_every_metric_the_grids_and_the_checkpoints(
    data_dir: Path, offline: Path
) -> None:
    fitted = main(
        [
            "fit", "--config", VAE, "--config", WANDB_FRAGMENT, *tiny(data_dir),
            "--trainer.max_epochs=2", "--trainer.logger.init_args.log_model=true",
            "--trainer.logger.init_args.tags=[tiny, test]", "--trainer.logger.init_args.group=tests",
        ]
    )  # fmt: skip
    [run_dir] = offline_runs(offline)
    run = read_run(run_dir)
    assert run["state"] == "finished"  # main() ended the run: its files are complete

    # the CLI's resolved config, nested as in config.yaml (saved in the run's own folder), and nothing else
    run_id = run_dir.name.rsplit("-", 1)[1]
    folder = offline / "ae_lightning" / run_id
    saved = yaml.safe_load((folder / "config.yaml").read_text())
    config = {key: value for key, value in run["config"].items() if key != "_wandb"}
    assert config == saved
    assert config["model"]["class_path"] == "ae_lightning.models.VAE"
    assert config["model"]["init_args"]["beta"] == 1.0
    assert config["data"]["init_args"]["data_dir"] == str(data_dir)
    assert config["trainer"]["logger"]["init_args"]["tags"] == ["tiny", "test"]
    assert "latent_dim" not in config  # the trainer's flat copy of the hyperparameters was not added
    assert CONFIG_FILE_NAME in run["files"]
    assert yaml.safe_load((run_dir / "files" / CONFIG_FILE_NAME).read_text()) == saved

    # every metric, with its stage prefix, against the trainer's global step
    metrics = {key for row in run["history"] for key in row if not key.startswith(("_", "samples/"))}
    terms = ("loss", "recon", "kl")
    latent_dim = config["model"]["init_args"]["latent_dim"]
    assert metrics == {f"{stage}/{term}" for stage in ("train", "val") for term in terms} | {
        "train/kl_weight",
        "val/active_units",
        *(f"val/kl_dim/{unit}" for unit in range(latent_dim)),
        "epoch",
        "trainer/global_step",
    }
    last = [row for row in run["history"] if "val/loss" in row][-1]
    assert last["val/loss"] == pytest.approx(fitted.trainer.callback_metrics["val/loss"].item(), rel=1e-6)

    # one grid per checkpoint step (last.ckpt shares the step of the top-k one), as 0-255 images
    grids = [row for row in run["history"] if "samples/grid.filenames" in row]
    assert [row["trainer/global_step"] for row in grids] == [5, 10]
    assert [row["samples/grid.captions"] for row in grids] == [["epoch 0, step 5"], ["epoch 1, step 10"]]
    checkpoints = folder / "checkpoints"
    for row in grids:
        [filename] = row["samples/grid.filenames"]
        assert filename in run["files"]
        logged = read_png(run_dir / "files" / filename)
        step = row["trainer/global_step"]
        [beside_checkpoint] = checkpoints.glob(f"epoch=*-step={step}-*.png")
        assert logged.shape == (3, *grid_size(16, samples=32))
        assert logged.equal(read_png(beside_checkpoint))  # the PNG written beside the checkpoint, not darker

    # log_model: the checkpoints as artifacts, recorded offline for `wandb sync`; the best one tagged so
    kept = sorted(p.name for p in checkpoints.glob("*.ckpt"))
    artifacts = run["artifacts"]
    assert sorted(json.loads(a["metadata"])["original_filename"] for a in artifacts) == kept
    assert {a["name"] for a in artifacts} == {f"model-{run_id}"}
    assert all(c["path"] == "model.ckpt" for a in artifacts for c in a["manifest"]["contents"])
    best = [json.loads(a["metadata"])["original_filename"] for a in artifacts if "best" in a["aliases"]]
    assert best == [Path(fitted.trainer.checkpoint_callback.best_model_path).name]


@pytest.mark.slow
def test_runs_in_one_process_are_separate_runs(data_dir: Path, offline: Path) -> None:
    """fit then test, as a script or a notebook may: two W&B runs, not the test logged into the fit's."""
    fit = main(["fit", "--config", VAE, "--config", WANDB_FRAGMENT, *tiny(data_dir)])
    ckpt = fit.trainer.checkpoint_callback.last_model_path
    main(["test", "--config", VAE, "--config", WANDB_FRAGMENT, *tiny(data_dir), "--ckpt_path", ckpt])
    runs = [read_run(run_dir) for run_dir in offline_runs(offline)]
    assert len(runs) == 2 and all(run["state"] == "finished" for run in runs)
    logged = [{key for row in run["history"] for key in row} for run in runs]
    assert sum("val/loss" in keys for keys in logged) == 1
    assert sum("test/loss" in keys for keys in logged) == 1


def test_config_fragment_sets_the_logger_and_its_options_from_the_command_line(
    capsys: pytest.CaptureFixture,
) -> None:
    args = ["--trainer.logger.init_args.project=mnist", "--trainer.logger.init_args.name=beta4",
            "--trainer.logger.init_args.tags=[vae, sweep]", "--trainer.logger.init_args.group=g1",
            "--trainer.logger.init_args.log_model=all"]  # fmt: skip
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", VAE, "--config", WANDB_FRAGMENT, *args, "--print_config"])
    assert done.value.code == 0
    logger = yaml.safe_load(capsys.readouterr().out)["trainer"]["logger"]
    assert logger["class_path"] == "ae_lightning.loggers.WandbLogger"
    assert {key: logger["init_args"][key] for key in ("project", "name", "tags", "group", "log_model")} == {
        "project": "mnist", "name": "beta4", "tags": ["vae", "sweep"], "group": "g1", "log_model": "all",
    }  # fmt: skip


def _write_netrc(home: Path, machine: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / ".netrc").write_text(f"machine {machine}\n  login user\n  password {'k' * 40}\n")
    (home / ".netrc").chmod(0o600)


@pytest.mark.parametrize(
    "env, netrc_machine, offline_because",
    [
        ({}, None, "no API key found (neither WANDB_API_KEY nor a `wandb login` for api.wandb.ai)"),
        ({"WANDB_API_KEY": "k" * 40}, None, None),
        ({}, "api.wandb.ai", None),  # `wandb login`
        (
            {"WANDB_BASE_URL": "https://wandb.example.com"},
            "api.wandb.ai",
            "`wandb login` for wandb.example.com",
        ),
        ({"WANDB_BASE_URL": "https://wandb.example.com"}, "wandb.example.com", None),
        ({"WANDB_MODE": "offline"}, None, None),  # the user chose: W&B says so itself
        ({"WANDB_MODE": "online"}, None, None),
    ],
    ids=["nothing", "api-key", "netrc", "netrc-other-host", "netrc-own-host", "mode-offline", "mode-online"],
)
def test_offline_only_without_a_key_a_login_or_a_chosen_mode(
    env: dict[str, str], netrc_machine: str | None, offline_because: str | None,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    for key in (*_WANDB_ACCOUNT_VARS, "WANDB_MODE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if netrc_machine:
        _write_netrc(tmp_path, netrc_machine)
    reason = offline_reason()
    if offline_because is None:
        assert reason is None
    else:
        assert reason is not None and offline_because in reason


@pytest.mark.slow
@pytest.mark.parametrize(
    "account, because",
    [
        ({}, "no API key found"),
        # a key, but a server that refuses connections: W&B gives up after its init_timeout, the run goes on
        (
            {"WANDB_API_KEY": "k" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9", "WANDB_INIT_TIMEOUT": "3"},
            "the W&B server did not answer",
        ),
    ],
    ids=["no-key", "server-unreachable"],
)
def test_the_real_command_goes_offline_with_one_line_and_never_waits_on_a_prompt(
    account: dict[str, str], because: str, data_dir: Path, tmp_path: Path
) -> None:
    env = wandb_env(tmp_path)
    del env["WANDB_MODE"], env["WANDB_SILENT"]  # W&B left to choose; its messages shown
    result = subprocess.run(
        [sys.executable, str(REPO / "cli.py"), "fit", "--config", VAE, "--config", WANDB_FRAGMENT,
         *tiny(data_dir), "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1"],
        cwd=tmp_path, env={**env, **account}, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    lines = [line for line in output.splitlines() if "so this run is logged offline" in line]
    assert len(lines) == 1 and because in lines[0]
    [run_dir] = offline_runs(tmp_path / "wandb_dir")
    assert f"logged offline in {run_dir}; upload it later with `wandb sync {run_dir}`" in lines[0]
    assert read_run(run_dir)["state"] == "finished"


@pytest.mark.slow
def test_under_ddp_only_rank_zero_makes_the_run(data_dir: Path, tmp_path: Path) -> None:
    """Two CPU processes: one offline run, one run folder, holding the config and the metrics."""
    result = subprocess.run(
        [sys.executable, str(REPO / "cli.py"), "fit", "--config", VAE, "--config", WANDB_FRAGMENT,
         *tiny(data_dir), "--trainer.devices=2", "--trainer.strategy=ddp"],
        cwd=tmp_path, env=wandb_env(tmp_path), stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    wandb_dir = tmp_path / "wandb_dir"
    [run_dir] = offline_runs(wandb_dir)
    runs = [p.name for p in (wandb_dir / "wandb").iterdir() if p.name.startswith(("run-", "offline-run-"))]
    assert runs == [run_dir.name]
    [folder] = (wandb_dir / "ae_lightning").iterdir()
    assert folder.name == run_dir.name.rsplit("-", 1)[1]
    assert (folder / "config.yaml").is_file() and list((folder / "checkpoints").glob("*.ckpt"))
    run = read_run(run_dir)
    assert run["config"]["trainer"]["strategy"] == "ddp"
    assert {"train/loss", "val/loss"} <= {key for row in run["history"] for key in row}
    # 72 training images split over 2 processes in batches of 16: 3 steps, where one process would take 5
    grids = [row for row in run["history"] if "samples/grid.filenames" in row]
    assert [row["trainer/global_step"] for row in grids] == [3]
    assert not (tmp_path / "wandb").exists() and not (tmp_path / "runs").exists()  # nothing in the cwd


@pytest.mark.slow
def test_a_wandb_run_continued_by_its_id_keeps_its_folder_and_takes_the_new_config(
    data_dir: Path, offline: Path
) -> None:
    """Resuming with the run's id and last.ckpt: same folder, its config.yaml now that of the second part."""
    args = [
        "fit",
        "--config",
        AE_CONFIG,
        "--config",
        WANDB_FRAGMENT,
        *tiny(data_dir),
        "--trainer.logger.init_args.id=r1",
    ]
    main(args)
    folder = offline / "ae_lightning" / "r1"
    main([*args, "--trainer.max_epochs=2", f"--ckpt_path={folder / 'checkpoints' / 'last.ckpt'}"])
    assert yaml.safe_load((folder / "config.yaml").read_text())["trainer"]["max_epochs"] == 2
    assert sorted(p.name for p in (folder / "checkpoints").glob("epoch=*.ckpt"))[-1].startswith(
        "epoch=1-step=10"
    )
    # offline, W&B writes each part in a folder of its own, both holding run-<id>.wandb (the folder names may
    # differ from offline-run-<time>-<id> when both parts start within the same second)
    parts = sorted(offline_runs(offline), key=lambda part: (part / "run-r1.wandb").stat().st_mtime)
    assert [(part / "run-r1.wandb").is_file() for part in parts] == [True, True]
    assert read_run(parts[-1])["config"]["trainer"]["max_epochs"] == 2


SWEEP = CONFIGS / "sweeps" / "vae_beta.yaml"


@pytest.mark.parametrize("beta, latent_dim", [(4.0, 2), (0.5, 10)])
def test_sweep_command_with_values_substituted_sets_them(
    beta: float, latent_dim: int, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep's command, its macros expanded as `wandb agent` expands them, parses and sets the values."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    sweep = yaml.safe_load(SWEEP.read_text())
    assert sweep["metric"]["name"] == "val/loss"  # a metric the models log
    assert {beta} <= set(sweep["parameters"]["model.beta"]["values"])
    assert {latent_dim} <= set(sweep["parameters"]["model.latent_dim"]["values"])
    values = {"model.beta": {"value": beta}, "model.latent_dim": {"value": latent_dim}}
    macros = create_sweep_command_args({"args": values})
    macros.update(env=["/usr/bin/env"], interpreter=["python"], program=[sweep["program"]])
    command = []
    for part in sweep["command"]:  # as wandb_agent.Agent._command_run does
        command += macros.get(part[2:-1], []) if part.startswith("${") and part.endswith("}") else [part]
    assert command[:3] == ["/usr/bin/env", "python", "cli.py"]
    assert f"--model.beta={beta}" in command

    monkeypatch.chdir(REPO)  # `wandb agent` runs from the repository root, where cli.py is
    with pytest.raises(SystemExit) as done:
        main([*command[3:], "--print_config"])
    assert done.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] == "ae_lightning.models.VAE"
    assert printed["model"]["init_args"]["beta"] == beta
    assert printed["model"]["init_args"]["latent_dim"] == latent_dim
    assert printed["trainer"]["logger"]["class_path"] == "ae_lightning.loggers.WandbLogger"
