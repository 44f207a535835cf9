"""One-class scoring: the shaped residual score, the restoration autoencoder, and the protocol harness
(benchmarks/evaluation.py one_class, benchmarks/one_class.py)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ae_lightning.autoencoders import AE, VAE, DenoisingAE, RestorationAE
from ae_lightning.autoencoders.scoring import gaussian_blur, residual_score
from ae_lightning.batch import Batch
from ae_lightning.errors import ConfigError
from benchmarks import one_class as protocol
from tests.conftest import REPO, VAL_SIZE, run_and_fail, tiny


def test_the_residual_score_by_hand() -> None:
    """Unsmoothed: the summed squared residual; `intensity`: divided by the image's sum above the bottom of
    the range, at least one full pixel's."""
    x = torch.zeros(2, 1, 3, 3)
    x[0, 0, 1, 1], x[0, 0, 0, 0] = 1.0, 0.5  # ink 1.5
    reconstruction = x.clone()
    reconstruction[0, 0, 1, 1] = 0.4  # residual 0.6
    reconstruction[1, 0, 2, 2] = 0.3  # a black image (ink 0 -> 1) with a residual -0.3
    plain = residual_score(x, reconstruction, 0.0, "none", 0.0, 1.0)
    torch.testing.assert_close(plain, torch.tensor([0.36, 0.09]))
    relative = residual_score(x, reconstruction, 0.0, "intensity", 0.0, 1.0)
    torch.testing.assert_close(relative, torch.tensor([0.36 / 1.5, 0.09]))
    # in [-1, 1] the ink is measured from -1
    shifted = residual_score(x * 2 - 1, reconstruction * 2 - 1, 0.0, "intensity", -1.0, 1.0)
    torch.testing.assert_close(shifted, torch.tensor([4 * 0.36 / 3.0, 4 * 0.09 / 2.0]))


def test_the_blur_is_a_normalised_gaussian_convolution_and_forgives_a_stroke_a_pixel_aside() -> None:
    """The separable blur equals a 2-D convolution with the outer product of the 1-D Gaussian; a stroke moved
    by a pixel (+1 beside -1) keeps far less of its squared residual than a missing stroke (+1 alone)."""
    sigma = 1.0
    offsets = torch.arange(-3, 4, dtype=torch.float32)
    kernel = torch.exp(-0.5 * offsets**2 / sigma**2)
    kernel = kernel / kernel.sum()
    x = torch.randn(2, 3, 9, 11, generator=torch.Generator().manual_seed(0))
    direct = F.conv2d(x, torch.outer(kernel, kernel).expand(3, 1, 7, 7), padding=3, groups=3)
    torch.testing.assert_close(gaussian_blur(x, sigma), direct)
    missing, aside = torch.zeros(1, 1, 15, 15), torch.zeros(1, 1, 15, 15)
    missing[0, 0, 7, 7] = 1.0
    aside[0, 0, 7, 7], aside[0, 0, 7, 8] = 1.0, -1.0
    zero = torch.zeros(1, 1, 15, 15)
    blurred_missing = residual_score(missing, zero, sigma, "none", 0.0, 1.0).item()
    blurred_aside = residual_score(aside, zero, sigma, "none", 0.0, 1.0).item()
    # unblurred the "aside" residual is twice the "missing" one (2 vs 1)
    assert blurred_aside < 0.6 * blurred_missing and blurred_missing < 0.1


def test_the_score_options_shape_the_anomaly_score_of_ae_like_models() -> None:
    """AE's and DenoisingAE's anomaly_score with the options is `residual_score` of their reconstruction; the
    loss is untouched (still the reconstruction loss)."""
    torch.manual_seed(0)
    x = torch.rand(4, 1, 28, 28)
    for cls in (AE, DenoisingAE):
        model = cls(latent_dim=4, score_smoothing=1.0, score_normalization="intensity").eval()
        expected = residual_score(x, model(x), 1.0, "intensity", 0.0, 1.0)
        torch.testing.assert_close(model.anomaly_score(Batch(x)), expected)
        torch.testing.assert_close(
            model.loss_terms(Batch(x))["recon"], (model(x) - x).square().flatten(1).sum(1)
        )


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (AE, {"score_smoothing": -1.0}, "score_smoothing must be a standard deviation"),
        (AE, {"score_smoothing": 1.0, "image_shape": (3,)}, "vector data take score_smoothing 0"),
        (AE, {"score_normalization": "ink"}, "score_normalization must be 'none' or 'intensity'"),
        (VAE, {"score_normalization": "intensity"}, "VAE's anomaly score is not a reconstruction error"),
        (RestorationAE, {"erasures": ["twist"]}, r"erasures must be distinct names from \['rotate'"),
        (RestorationAE, {"erasures": []}, "at least one"),
        (RestorationAE, {"erasures": ["rotate", "rotate"]}, "distinct"),
        (RestorationAE, {"image_shape": (1, 28, 20)}, "needs square images, got 28x20"),
        (RestorationAE, {"erasures": ["gray"]}, "'gray' takes colour images"),
        (RestorationAE, {"image_shape": (5,)}, "vector data have none"),
    ],
)
def test_bad_score_and_erasure_arguments_fail_in_one_line(cls: type, kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        cls(latent_dim=4, **kwargs)
    assert "\n" not in str(error.value)


def test_each_erasure_by_hand() -> None:
    """rotate k = torch.rot90 by k quarter turns, flip = mirrored left-right, mask = one quadrant set to the
    bottom of the range, gray = the channel mean; each image of a batch in its own way."""
    x = torch.rand(4, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    model = RestorationAE(latent_dim=2, erasures=["rotate", "flip", "mask", "gray"], image_shape=(3, 4, 4))
    assert len(model.views()) == 4 * 2 * 4 * 1
    ways = torch.tensor([[0, 0, 0, 0], [1, 0, 1, 0], [2, 1, 2, 0], [3, 1, 3, 0]])
    erased = model.erase(x, ways)
    for i, (k, flip, quadrant, _) in enumerate(ways.tolist()):
        expected = torch.rot90(x[i], k, dims=(1, 2))
        expected = expected.flip(2) if flip else expected
        rows, cols = (
            slice(2 * (quadrant // 2), 2 * (quadrant // 2) + 2),
            slice(2 * (quadrant % 2), 2 * (quadrant % 2) + 2),
        )
        expected = expected.clone()
        expected[:, rows, cols] = 0.0
        expected = expected.mean(0, keepdim=True).expand(3, 4, 4)
        torch.testing.assert_close(erased[i], expected)
    assert torch.equal(x, torch.rand(4, 3, 4, 4, generator=torch.Generator().manual_seed(1)))  # untouched


def test_the_restoration_score_is_the_mean_over_the_fixed_views_and_the_same_every_time() -> None:
    """The anomaly score averages the shaped residual score of restoring every view; twice the same numbers,
    and an image scores the same alone as in a batch (what export parity needs)."""
    torch.manual_seed(0)
    x = torch.rand(3, 1, 28, 28)
    model = RestorationAE(latent_dim=4, erasures=["rotate", "flip"], score_smoothing=1.0).eval()
    by_hand = torch.stack(
        [
            residual_score(x, model(model.erase(x, torch.tensor(view).expand(3, -1))), 1.0, "none", 0.0, 1.0)
            for view in model.views()
        ]
    ).mean(0)
    score = model.anomaly_score(Batch(x))
    torch.testing.assert_close(score, by_hand)
    assert torch.equal(score, model.anomaly_score(Batch(x)))
    torch.testing.assert_close(model.anomaly_score(Batch(x[1:2])), score[1:2])
    model.train()
    assert model.loss_terms(Batch(x))["loss"].shape == (3,)  # one random view per image while training


def test_the_sweep_resumes_grows_and_refuses_other_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """benchmarks/one_class.sweep: a run that fails part way leaves the finished runs in the file; started
    again it runs only the rest; more seeds add runs; other settings are refused in one line. The table has
    each class's mean over seeds, the mean's spread, PCA and the published rows."""
    monkeypatch.setattr(protocol, "pca_auroc", lambda *args: 0.5)
    settings = {"epochs": 1, "val_size": 10, "components": 2, "extra": []}
    plan = {"configs": ["a.yaml"], "datasets": ["MNIST"], "classes": [0, 1], "seeds": [0], "data_dir": "x"}
    path, calls = tmp_path / "sweep.json", []

    def fit_and_test(config: str, dataset: str, normal_class: int, seed: int) -> dict[str, float]:
        calls.append((normal_class, seed))
        if len(calls) == 2 and not path.with_suffix(".stop").exists():
            path.with_suffix(".stop").touch()
            raise KeyboardInterrupt
        return {"test/auroc": 0.9 + 0.02 * normal_class + 0.04 * seed, "fit_seconds": 1.0}

    with pytest.raises(KeyboardInterrupt):
        protocol.sweep(path, settings, plan, fit_and_test)
    assert list(json.loads(path.read_text())["runs"]) == [
        "PCA-2|MNIST|0|0",
        "PCA-2|MNIST|1|0",
        "a.yaml|MNIST|0|0",
    ]
    state = protocol.sweep(path, settings, {**plan, "seeds": [0, 1]}, fit_and_test)
    assert calls == [(0, 0), (1, 0), (0, 1), (1, 0), (1, 1)]  # class by class, each over its seeds
    table = protocol.table(state, "MNIST")
    assert "| `a.yaml` | **0.930 ± 0.028** | 0.920 | 0.940 | 0 (0.920) | 1 |" in table
    assert "| PCA-2 | 0.500 | 0.500 | 0.500 | - | - |" in table
    assert "| ARNet / ITAE (Ye et al. 2020, Tables 1-2) | 0.983 |" in table
    with pytest.raises(SystemExit, match="holds a sweep with other settings"):
        protocol.sweep(path, {**settings, "epochs": 2}, plan, fit_and_test)


@pytest.mark.slow
def test_the_one_class_harness_runs_from_the_command_line_and_resumes(data_dir: Path, tmp_path: Path) -> None:
    """`benchmarks/evaluation.py one_class` on the tiny MNIST and Fashion-MNIST: one line of progress per run,
    the JSON and the markdown tables; started again with a second seed it runs only the new runs."""
    out = tmp_path / "one_class.json"
    script = str(REPO / "benchmarks" / "evaluation.py")
    command = [sys.executable, script, f"--data-dir={data_dir}", "one_class", "--configs", "one_class.yaml",
               "--classes", "0", "1", "--seeds", "0", "--epochs=1",
               f"--val-size={VAL_SIZE}", "--components=2", f"--out={out}", "--extra=--data.batch_size=16",
               "--extra=--trainer.accelerator=cpu"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "[4/4] one_class.yaml FashionMNIST class 1 seed 0: AUROC" in done.stdout
    runs = json.loads(out.read_text())["runs"]
    assert len(runs) == 4 + 4 and all(0 <= run["test/auroc"] <= 1 for run in runs.values())
    tables = out.with_suffix(".md").read_text()
    assert "## MNIST" in tables and "## FashionMNIST" in tables and "| `one_class.yaml` |" in tables
    more_seeds = [*command[:10], "0", "1", *command[11:]]
    again = subprocess.run(more_seeds, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "4 of 8 runs done, 4 to go" in again.stdout and len(json.loads(out.read_text())["runs"]) == 12


@pytest.mark.parametrize(
    ("config", "flag", "message"),
    [
        ("restoration_ae", "--model.erasures=[twist]", "erasures must be distinct names"),
        ("one_class", "--model.score_smoothing=-1", "score_smoothing must be a standard deviation"),
        ("memae", "--model.memory_size=0", "memory_size"),
        ("deep_svdd", "--model.nu=1.5", "nu"),
    ],
)
def test_bad_one_class_arguments_are_one_line_through_the_cli(
    config: str, flag: str, message: str, data_dir: Path, in_tmp: Path, capsys: pytest.CaptureFixture
) -> None:
    line = run_and_fail(
        ["fit", "--config", str(REPO / "configs" / f"{config}.yaml"), *tiny(data_dir), flag], capsys
    )
    assert message in line and not (in_tmp / "runs").exists()  # nothing written
