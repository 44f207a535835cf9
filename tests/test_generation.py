"""The generation metric: the Fréchet distance and precision/recall against closed forms, the feature
classifier's cache and its digest check, and test/fid through a Trainer."""

from pathlib import Path

import pytest
import torch

from ae_lightning.errors import DataError
from ae_lightning.evaluation.feature_net import FeatureNet, load_or_train, train_feature_net, weights_sha256
from ae_lightning.evaluation.generation import covered, frechet_distance, kth_neighbour_distances
from tests.conftest import tiny_digits


def whitened(count: int, dim: int) -> torch.Tensor:
    """Points whose empirical mean is 0 and covariance exactly the identity, (count, dim)."""
    q, _ = torch.linalg.qr(
        torch.randn(count, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    )
    q = q - q.mean(0)
    q, _ = torch.linalg.qr(q)  # still orthonormal columns, and each orthogonal to the constant vector
    return q * (count - 1) ** 0.5


def test_frechet_distance_is_the_closed_form_of_two_gaussians() -> None:
    real = whitened(500, 4)
    scales, shift = torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=torch.float64), torch.tensor([1.0, 0, -2, 0.5])
    generated = real * scales + shift.double()
    # |d|^2 + tr(I) + tr(S^2) - 2 tr(S), exactly: the covariances are I and S^2
    expected = shift.double().square().sum() + 4 + scales.square().sum() - 2 * scales.sum()
    torch.testing.assert_close(frechet_distance(real, generated), expected)
    assert frechet_distance(real, real).abs() < 1e-8


def test_precision_and_recall_count_the_samples_inside_the_others_neighbourhoods() -> None:
    torch.manual_seed(0)
    real = torch.randn(300, 5)
    radii = kth_neighbour_distances(real, k=3)
    third = torch.cdist(real[:1], real).sort().values[0, 3]  # the 3rd nearest other point of point 0
    torch.testing.assert_close(radii[0], third)
    assert covered(real, real, radii) == 1.0
    far = real + 100
    assert covered(far, real, radii) == 0.0
    half = torch.cat([real[:150], far[:150]])
    assert covered(half, real, radii) == 0.5


def test_the_classifier_trains_deterministically_is_cached_and_refuses_tampered_weights(
    tmp_path: Path,
) -> None:
    images, labels = tiny_digits(64, seed=1)
    images = images.unsqueeze(1)
    first, again = train_feature_net(images, labels), train_feature_net(images, labels)
    assert weights_sha256(first) == weights_sha256(again)  # the same weights, the same digest
    network, digest = load_or_train(tmp_path, "MNIST", images, labels)
    assert digest == weights_sha256(first) and (tmp_path / f"classifier-{digest}.pt").is_file()
    assert load_or_train(tmp_path, "MNIST", images[:1], labels[:1])[1] == digest  # from the cache
    assert network(images[:3].float() / 255).shape == (3, 10) and network.features(
        images[:3] / 255
    ).shape == (3, 128)
    tampered = FeatureNet()
    torch.save(tampered.state_dict(), tmp_path / f"classifier-{digest}.pt")
    with pytest.raises(DataError, match=r"does not hold the weights its name says.*delete it"):
        load_or_train(tmp_path, "MNIST", images, labels)


def test_test_logs_the_fid_of_a_generative_model_and_keeps_the_classifier_out_of_checkpoints(
    data_dir: Path, tmp_path: Path
) -> None:
    from lightning.pytorch import Trainer

    from ae_lightning.data import MNISTDataModule
    from ae_lightning.models import AE, VAE
    from tests.conftest import VAL_SIZE

    trainer = Trainer(default_root_dir=tmp_path, logger=False, max_epochs=1, limit_train_batches=2,
                      limit_val_batches=1, accelerator="cpu", enable_progress_bar=False,
                      enable_model_summary=False)  # fmt: skip
    datamodule = MNISTDataModule(data_dir=str(data_dir), val_size=VAL_SIZE, batch_size=16)
    model = VAE(latent_dim=4, hidden_dims=[16])
    trainer.fit(model, datamodule)
    metrics = trainer.test(model, datamodule)[0]
    assert (
        metrics["test/fid"] > 0 and 0 <= metrics["test/precision"] <= 1 and 0 <= metrics["test/recall"] <= 1
    )
    generation = next(m for m in model.evaluator.metrics if type(m).__name__ == "Generation")
    assert not any("classifier" in name for name in model.state_dict())
    assert len(generation.network) == 1 and list(
        (data_dir / "MNIST" / "feature_classifier").glob("classifier-*.pt")
    )
    plain = AE(latent_dim=4, hidden_dims=[16])  # no prior: no FID
    trainer = Trainer(default_root_dir=tmp_path, logger=False, max_steps=1, limit_val_batches=0,
                      accelerator="cpu", enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(plain, datamodule)
    assert "test/fid" not in trainer.test(plain, datamodule)[0]
