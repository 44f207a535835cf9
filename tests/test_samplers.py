"""Post-hoc samplers (`ae_lightning.samplers`) and the `sample` command: each fit checked on data whose answer
is known, the refusals of models a sampler cannot serve, and the command through the real entry point."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ae_lightning import autoencoders
from ae_lightning.cli import main
from ae_lightning.samplers import SAMPLERS, GaussianMixtureSampler
from tests.conftest import CONFIGS, read_png, run_and_fail, run_folder, tiny
from tests.test_scaling import cli

#: a tiny model of every kind of latent space and prior
TINY = {
    "AE": lambda: autoencoders.AE(latent_dim=2, hidden_dims=[8]),
    "VAE": lambda: autoencoders.VAE(latent_dim=2, hidden_dims=[8]),
    "VampVAE": lambda: autoencoders.VampVAE(latent_dim=2, hidden_dims=[8], num_components=3),
    "SVAE": lambda: autoencoders.SVAE(latent_dim=3, hidden_dims=[8]),
    "PoincareVAE": lambda: autoencoders.PoincareVAE(latent_dim=2, hidden_dims=[8]),
    "VQVAE": lambda: autoencoders.VQVAE(latent_dim=4, code_dim=2, codebook_size=4, hidden_dims=[8]),
    "ConditionalVAE": lambda: autoencoders.ConditionalVAE(latent_dim=2, hidden_dims=[8]),
    "RHVAE": lambda: autoencoders.RHVAE(latent_dim=2, hidden_dims=[8], n_lf=1, metric_hidden_dims=[8]),
}
#: which tiny models each prior sampler serves (the fitted ones and normal serve codes in R^D, unlabelled)
SERVES = {
    "normal": {"AE", "VAE", "VampVAE", "RHVAE"},
    "gmm": {"AE", "VAE", "VampVAE", "RHVAE"},
    "two_stage": {"AE", "VAE", "VampVAE", "RHVAE"},
    "maf": {"AE", "VAE", "VampVAE", "RHVAE"},
    "iaf": {"AE", "VAE", "VampVAE", "RHVAE"},
    "vamp": {"VampVAE"},
    "hypersphere": {"SVAE"},
    "poincare": {"PoincareVAE"},
    "pixelcnn": {"VQVAE"},
    "rhvae": {"RHVAE"},
}


def known_mixture(count: int = 3000) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` draws of three well separated 2-D Gaussians (std 0.5) of weights 0.2, 0.3, 0.5; the means."""
    generator = torch.Generator().manual_seed(0)
    means = torch.tensor([[-4.0, 0.0], [4.0, 1.0], [0.0, 5.0]])
    components = torch.multinomial(
        torch.tensor([0.2, 0.3, 0.5]), count, replacement=True, generator=generator
    )
    return means[components] + 0.5 * torch.randn(count, 2, generator=generator), means


def test_a_gmm_recovers_the_means_weights_and_covariances_of_a_known_mixture() -> None:
    codes, means = known_mixture()
    sampler = GaussianMixtureSampler(2, num_components=3)
    sampler.fit(codes)
    order = [int(sampler.means.float()[:, 0].sub(mean[0]).abs().argmin()) for mean in means]
    torch.testing.assert_close(sampler.means[order].float(), means, atol=0.06, rtol=0)
    torch.testing.assert_close(
        sampler.weights[order].float(), torch.tensor([0.2, 0.3, 0.5]), atol=0.03, rtol=0
    )
    covariances = sampler.cholesky @ sampler.cholesky.transpose(1, 2)
    torch.testing.assert_close(covariances.float(), 0.25 * torch.eye(2).expand(3, 2, 2), atol=0.04, rtol=0)
    # its density integrates to 1 on a grid covering the mass, and its samples have the data's moments
    axis = torch.linspace(-9, 9, 181)
    grid = torch.cartesian_prod(axis, axis)
    assert sampler.log_density(grid).exp().sum().item() * 0.1**2 == pytest.approx(1.0, abs=0.01)
    drawn = sampler.sample_codes(TINY["AE"](), 20000, torch.Generator().manual_seed(1))
    torch.testing.assert_close(drawn.mean(0), codes.mean(0), atol=0.1, rtol=0)


def test_a_fitted_gmm_is_repeatable_and_round_trips_as_data() -> None:
    codes, _ = known_mixture(500)
    first, second = GaussianMixtureSampler(2, num_components=3), GaussianMixtureSampler(2, num_components=3)
    first.fit(codes)
    second.fit(codes)
    assert all(
        torch.equal(a, b)
        for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True)
    )
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    loaded = GaussianMixtureSampler(2, num_components=3)
    loaded.load_state_dict(torch.load(buffer, weights_only=True))
    model = TINY["AE"]()
    draws = [s.sample_codes(model, 5, torch.Generator().manual_seed(3)) for s in (first, loaded)]
    assert torch.equal(*draws)


@pytest.mark.parametrize("name", sorted(SERVES))
def test_each_sampler_serves_the_models_it_can_and_refuses_the_others_in_one_line(name: str) -> None:
    cls = SAMPLERS[name]
    for model_name, build in TINY.items():
        model = build().eval()
        reason = cls.refusal(model)
        if model_name in SERVES[name]:
            assert reason is None, (model_name, reason)
            sampler = cls.for_model(model, **({"mcmc_steps": 2} if name == "rhvae" else {}))
            if sampler.fitted:
                sampler.fit(sampler.encode(model, torch.rand(50, 1, 28, 28)))
            codes = sampler.sample_codes(model, 7, torch.Generator().manual_seed(0))
            again = sampler.sample_codes(model, 7, torch.Generator().manual_seed(0))
            assert codes.shape == (7, model.latent_dim) and torch.equal(codes, again)
            assert sampler.sample(model, 7).shape == (7, 1, 28, 28)
        else:
            assert reason is not None and "\n" not in reason and model_name in reason, (model_name, reason)
            with pytest.raises(ValueError):
                cls.for_model(model)


def test_the_prior_samplers_draw_where_the_codes_live() -> None:
    generator = torch.Generator().manual_seed(0)
    on_sphere = SAMPLERS["hypersphere"].for_model(TINY["SVAE"]()).sample_codes(TINY["SVAE"](), 500, generator)
    torch.testing.assert_close(on_sphere.norm(dim=1), torch.ones(500))
    assert on_sphere.mean(0).abs().max() < 0.1  # uniform: no direction preferred
    poincare = TINY["PoincareVAE"]()
    in_ball = SAMPLERS["poincare"].for_model(poincare).sample_codes(poincare, 500, generator)
    assert (in_ball.norm(dim=1) < 1 / poincare.curvature**0.5).all()
    normal = SAMPLERS["normal"].for_model(TINY["AE"]()).sample_codes(TINY["AE"](), 20000, generator)
    torch.testing.assert_close(torch.cov(normal.T), torch.eye(2), atol=0.05, rtol=0)


# --- the command ---


@pytest.fixture(scope="module")
def rae_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding an RAE trained for an epoch on the tiny data (runs/rae/version_0)."""
    folder = tmp_path_factory.mktemp("rae")
    fitted = cli(
        ["fit", "--config", str(CONFIGS / "rae.yaml"), *tiny(data_dir), "--trainer.max_epochs=2"], folder
    )
    assert fitted.returncode == 0, fitted.stderr[-2000:]
    return folder


def sample_args(data_dir: Path, *extra: str) -> list[str]:
    return ["sample", "--config", str(CONFIGS / "rae.yaml"), *tiny(data_dir), "--ckpt_path=last", *extra]


@pytest.mark.slow
def test_sample_fits_a_gmm_once_per_checkpoint_and_writes_a_grid_the_samples_and_their_fid(
    rae_run: Path, data_dir: Path
) -> None:
    """Through the real cli.py: the GMM is fitted on the training codes and saved beside the checkpoint under
    its SHA-256; a second call reuses it (the same samples), other options fit again."""
    args = sample_args(data_dir, "--sampler=gmm", "--num_samples=40", "--fid=true",
                       '--sampler_options={"num_components": 3}')  # fmt: skip
    first = cli([*args, "--output=first"], rae_run)
    assert first.returncode == 0, first.stderr[-2000:]
    checkpoints = run_folder(rae_run, "rae") / "checkpoints"
    (fitted,) = checkpoints.glob("sampler-gmm-*.pt")
    report = json.loads((rae_run / "first" / "sample.json").read_text())
    assert fitted.name == f"sampler-gmm-{report['checkpoint']['sha256']}.pt"
    assert report["options"]["num_components"] == 3 and report["num_samples"] == 40
    assert set(report["generation"]) == {"fid", "precision", "recall", "fid_images"}
    assert report["generation"]["fid"] > 0 and report["generation"]["fid_images"] == 40
    samples = np.load(rae_run / "first" / "samples.npz")
    assert samples["images"].shape == (40, 1, 28, 28) and samples["codes"].shape == (40, 16)
    assert read_png(rae_run / "first" / "grid.png").shape[0] in (1, 3)

    again = cli([*args, "--output=again"], rae_run)
    assert (
        again.returncode == 0
        and "Reusing the gmm sampler fitted for this checkpoint" in again.stdout + again.stderr
    )
    assert np.array_equal(np.load(rae_run / "again" / "samples.npz")["images"], samples["images"])
    other = cli([*sample_args(data_dir, "--sampler=gmm", "--num_samples=4", "--output=other"),
                 '--sampler_options={"num_components": 2}'], rae_run)  # fmt: skip
    assert other.returncode == 0 and "fitted with other options: fitting again" in other.stdout + other.stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--sampler=hypersphere"],
         "error: --sampler hypersphere: the hypersphere sampler draws codes on the unit sphere, but RAE"
         "'s are vectors in R^D"),
        (["--sampler=pixelcnn"], "error: --sampler pixelcnn: pixelcnn draws codebook indices; RAE's codes"),
        (["--sampler=rhvae"], "error: --sampler rhvae: "),
        (["--sampler=vamp"], "error: --sampler vamp: the vamp sampler draws from a VampVAE's learnt prior; "
                             "RAE has none"),
        (["--sampler=gmm", '--sampler_options={"components": 3}'], "error: --sampler_options for gmm: "),
        (["--sampler=gmm", '--sampler_options={"num_components": 0}'],
         "error: gmm needs num_components >= 1"),
        (["--num_samples=0"], "error: --num_samples must be at least 1, got 0"),
    ],
    ids=["hypersphere", "pixelcnn", "rhvae", "vamp", "unknown-option", "bad-option", "no-samples"],
)  # fmt: skip
def test_a_sampler_the_model_cannot_use_is_one_line_and_writes_nothing(
    flags: list[str], message: str, rae_run: Path, data_dir: Path, capsys, monkeypatch
) -> None:
    monkeypatch.chdir(rae_run)
    line = run_and_fail([*sample_args(data_dir, *flags), "--output=refused"], capsys)
    assert line.startswith(message), line
    assert not (rae_run / "refused").exists()


def test_sample_refuses_an_existing_output_before_fitting(
    rae_run: Path, data_dir: Path, capsys, monkeypatch
) -> None:
    monkeypatch.chdir(rae_run)
    (rae_run / "taken").mkdir(exist_ok=True)
    line = run_and_fail([*sample_args(data_dir, "--sampler=normal"), "--output=taken"], capsys)
    assert line == "error: --output taken exists: give another folder, or --overwrite true to replace it"
    written = main(
        [*sample_args(data_dir, "--sampler=normal", "--num_samples=3"), "--output=taken", "--overwrite=true"]
    )
    assert written is not None and (rae_run / "taken" / "grid.png").is_file()


#: each sampler through the real cli.py, once, on a model that can use it (small fits: a few epochs)
THROUGH_CLI = {
    "normal": ("ae.yaml", {}),
    "two_stage": ("ae.yaml", {"epochs": 2, "hidden_dim": 16}),
    "maf": ("ae.yaml", {"epochs": 2, "hidden_dims": [16]}),
    "iaf": ("ae.yaml", {"epochs": 1, "hidden_dims": [16]}),
    "pixelcnn": ("vqvae.yaml", {"epochs": 2, "num_layers": 2, "channels": 8, "embedding_dim": 8}),
    "vamp": ("vamp_vae.yaml", {}),
    "hypersphere": ("svae.yaml", {}),
    "poincare": ("poincare_vae.yaml", {}),
    "rhvae": ("rhvae.yaml", {"mcmc_steps": 3, "n_lf": 2}),
}


@pytest.mark.slow
@pytest.mark.parametrize("sampler", sorted(THROUGH_CLI))
def test_every_sampler_draws_through_the_real_command(sampler: str, data_dir: Path, tmp_path: Path) -> None:
    """`cli.py sample` with each sampler on a checkpoint of a model it serves (gmm: the test above): a grid
    of the images and the samples, finite and in the data's range."""
    config, options = THROUGH_CLI[sampler]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        main(["fit", "--config", str(CONFIGS / config), *tiny(data_dir)])
    drawn = cli(["sample", "--config", str(CONFIGS / config), *tiny(data_dir), "--ckpt_path=last",
                 f"--sampler={sampler}", "--num_samples=12", "--output=out",
                 f"--sampler_options={json.dumps(options)}"], tmp_path)  # fmt: skip
    assert drawn.returncode == 0, drawn.stderr[-2000:]
    images = np.load(tmp_path / "out" / "samples.npz")["images"]
    assert images.shape == (12, 1, 28, 28) and np.isfinite(images).all()
    low, high = (-1, 1) if "[-1, 1]" in (CONFIGS / config).read_text() else (0, 1)
    assert images.min() >= low and images.max() <= high
    assert json.loads((tmp_path / "out" / "sample.json").read_text())["sampler"] == sampler
    fitted = list((tmp_path / "runs").glob("*/version_0/checkpoints/sampler-*.pt"))
    assert len(fitted) == (1 if SAMPLERS[sampler].fitted else 0)
