"""Points on a helix or swiss roll: the datamodule, models on vectors, and the projection they learn."""

import math
from pathlib import Path

import pytest
import torch

from ae_lightning.cli import main
from ae_lightning.data import ManifoldDataModule
from ae_lightning.evaluation.projection import linear_fit_r2, projection_quality, spearman
from tests.conftest import CONFIGS, read_png, run_folder

SPIRAL, SPIRAL_DAE = str(CONFIGS / "spiral.yaml"), str(CONFIGS / "spiral_dae.yaml")
QUICK = ["--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false"]


def ready(**kwargs) -> ManifoldDataModule:
    datamodule = ManifoldDataModule(**{"num_points": 600, "val_size": 100, "test_size": 100, **kwargs})
    datamodule.setup("fit")
    return datamodule


def test_helix_points_lie_on_the_helix_with_their_true_angle() -> None:
    """Each clean point, mapped back to R^3, is (r cos t, r sin t, t / (4 pi)) of its own t; the issue's
    example point (3, 0, 0.5) at t = 2 pi is on the curve; data stay within [-1, 1] (tanh decoders)."""
    datamodule = ready(turns=2.0, radius=3.0)
    manifold = datamodule.manifold
    train = datamodule.datasets["train"]
    batch = train[torch.arange(len(train))]
    t = batch.coordinates[:, 0].double()
    expected = torch.stack([3 * t.cos(), 3 * t.sin(), t / (4 * math.pi)], 1)
    torch.testing.assert_close(manifold.to_xyz(batch.inputs), expected, atol=1e-5, rtol=0)
    example = manifold.to_data(torch.tensor([[3.0, 0.0, 0.5]], dtype=torch.float64))
    assert manifold.distance(example).item() < 1e-3
    assert batch.inputs.abs().max() <= 0.9 + 1e-6 and batch.inputs.shape == (400, 3)
    assert datamodule.image_shape == (3,) and datamodule.value_range == (-1.0, 1.0)


def test_the_split_is_seeded_and_disjoint_and_noise_moves_points_off_the_curve() -> None:
    first, again, other = ready(), ready(), ready(split_seed=1)
    index = {split: first.datasets[split].coordinates for split in ("train", "val", "test")}
    assert torch.equal(index["test"], again.datasets["test"].coordinates)
    assert not torch.equal(index["test"], other.datasets["test"].coordinates)
    every = torch.cat(list(index.values()))[:, 0]
    assert len(every) == 600 and len(every.unique()) == 600
    noisy = ready(noise_std=0.1)
    points = noisy.datasets["test"].points
    distance = noisy.manifold.distance(points).mean().item()
    assert 0.05 < distance < 0.2  # about 0.1 x sqrt(2): the noise across the curve
    assert ready().manifold.distance(ready().datasets["test"].points).max() < 1e-3


def test_an_embedding_hides_the_helix_in_r_d_and_keeps_its_shape() -> None:
    flat, hidden = ready(), ready(embed_dim=50)
    a, b = flat.datasets["test"].points.double(), hidden.datasets["test"].points.double()
    assert b.shape == (100, 50) and b.abs().max() <= 1
    # pairwise distances are kept, up to the constant factor 1 / sqrt(3)
    torch.testing.assert_close(torch.cdist(b, b) * math.sqrt(3), torch.cdist(a, a), atol=1e-4, rtol=0)
    torch.testing.assert_close(hidden.manifold.to_xyz(b), flat.manifold.to_xyz(a), atol=1e-4, rtol=0)


def test_the_swiss_roll_has_two_coordinates() -> None:
    datamodule = ready(manifold="swiss_roll")
    batch = datamodule.datasets["train"][torch.arange(10)]
    assert batch.coordinates.shape == (10, 2) and batch.inputs.shape == (10, 3)
    assert datamodule.manifold.distance(batch.inputs).max() < 0.02  # on the surface, up to the grid


def test_rank_correlation_and_linear_fit() -> None:
    x = torch.randn(200, generator=torch.Generator().manual_seed(0))
    assert spearman(x, x.exp()) == pytest.approx(1.0) and spearman(x, -(x**3)) == pytest.approx(-1.0)
    assert abs(spearman(x, torch.randn(200, generator=torch.Generator().manual_seed(1)))) < 0.2
    codes = torch.randn(100, 2, generator=torch.Generator().manual_seed(2))
    coordinates = codes @ torch.tensor([[2.0, 0.5], [-1.0, 3.0]]) + 4
    assert linear_fit_r2(codes, coordinates) == pytest.approx(1.0)
    assert set(projection_quality(codes[:, :1], coordinates[:, :1])) == {"linear_r2", "abs_spearman"}


@pytest.mark.slow
def test_the_spiral_config_learns_a_one_number_code_of_the_angle(in_tmp: Path) -> None:
    """configs/spiral.yaml as it comes: a 1-d code whose order is the angle's (|Spearman| >= 0.99, seen:
    1.0), reconstructions on the curve, and the two pictures."""
    main(["fit", "--config", SPIRAL, *QUICK])
    tested = main(["test", "--config", SPIRAL, *QUICK, "--ckpt_path", "last"])
    metrics = tested.trainer.callback_metrics
    assert metrics["test/abs_spearman"] >= 0.99
    assert metrics["test/reconstruction_distance"] < 0.03 and metrics["test/noise_var"] == 0
    run = run_folder(in_tmp, "spiral", version=1)
    assert read_png(run / "manifold.png").shape == (3, 300, 900)  # three planes
    assert read_png(run / "code_vs_coordinate.png").shape == (3, 300, 300)


@pytest.mark.slow
def test_the_denoising_config_moves_noisy_points_back_towards_the_curve(in_tmp: Path) -> None:
    """configs/spiral_dae.yaml: reconstructions at least 2x closer to the curve than their noisy inputs
    (seen: 7.3x)."""
    main(["fit", "--config", SPIRAL_DAE, *QUICK])
    metrics = main(["test", "--config", SPIRAL_DAE, *QUICK, "--ckpt_path", "last"]).trainer.callback_metrics
    assert metrics["test/distance_ratio"] >= 2.0
    assert metrics["test/input_distance"] >= 2 * metrics["test/reconstruction_distance"]


def test_a_two_number_code_of_the_swiss_roll_and_a_helix_hidden_in_r_784_train(in_tmp: Path) -> None:
    short = [*QUICK, "--trainer.max_epochs=1", "--data.num_points=1200", "--data.val_size=100",
             "--data.test_size=100"]  # fmt: skip
    main(["fit", "--config", SPIRAL, *short, "--data.manifold=swiss_roll", "--model.latent_dim=2"])
    tested = main(["test", "--config", SPIRAL, *short, "--data.manifold=swiss_roll", "--model.latent_dim=2",
                   "--ckpt_path", "last"])  # fmt: skip
    metrics = tested.trainer.callback_metrics
    assert "test/abs_spearman" not in metrics and 0 <= metrics["test/linear_r2"] <= 1
    fitted = main(["fit", "--config", SPIRAL, *short, "--data.embed_dim=784"])
    assert fitted.model.model.image_shape == (784,) and torch.isfinite(
        fitted.trainer.callback_metrics["val/loss"]
    )


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--data.num_points=0"], "num_points must be at least 1"),
        (["--data.noise_std=-0.1"], r"noise_std must be >= 0"),
        (["--data.embed_dim=3"], "embed_dim must be above 3"),
        (["--data.num_points=100", "--data.val_size=60", "--data.test_size=60"], "leave training points"),
        (["--model.latent_dim=3"], "AE needs latent_dim < the input size 3"),
        (["--model.backbone=conv"], "the conv backbone needs images"),
        (["--data.manifold=torus"], "torus"),
    ],
)
def test_bad_settings_are_one_line(flags: list[str], message: str, in_tmp: Path, capsys) -> None:
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", SPIRAL, *QUICK, *flags])
    # a value error ends with sys.exit("error: ..."); a parse error prints two lines and exits with 2
    code = done.value.code
    lines = [code] if isinstance(code, str) else capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(lines) <= 2 and any(message in line for line in lines), lines
    assert all("\n" not in line for line in lines)
    assert not (in_tmp / "runs" / "spiral").exists() or not any((in_tmp / "runs" / "spiral").iterdir())


@pytest.mark.parametrize(
    "model, flags",
    [
        ("VAE", []),
        ("IWAE", ["--model.num_samples=2"]),
        ("SparseAE", ["--model.sparsity_penalty=l1", "--model.latent_dim=8"]),
        ("ContractiveAE", []),
        ("VQVAE", ["--model.latent_dim=4", "--model.code_dim=2", "--model.codebook_size=16"]),
    ],
)
def test_the_mlp_variants_train_on_points(model: str, flags: list[str], in_tmp: Path) -> None:
    """Every variant that makes sense on vectors trains on the helix (the AE and the DAE: above)."""
    short = [*QUICK, "--trainer.max_epochs=1", "--data.num_points=600", "--data.val_size=100",
             "--data.test_size=100", f"--model=ae_lightning.models.{model}", *flags]  # fmt: skip
    fitted = main(["fit", "--config", SPIRAL, *short])
    assert fitted.model.model.image_shape == (3,)
    assert torch.isfinite(fitted.trainer.callback_metrics["val/loss"])
    tested = main(["test", "--config", SPIRAL, *short, "--ckpt_path", "last"])
    assert "test/linear_r2" in tested.trainer.callback_metrics


def test_a_conditional_vae_on_unlabelled_points_is_one_line(in_tmp: Path) -> None:
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", SPIRAL, *QUICK, "--model=ae_lightning.models.ConditionalVAE"])
    assert "needs labelled batches" in str(done.value.code)
