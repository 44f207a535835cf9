"""Anomaly maps: how a model makes them, the score read off them, their calibration on validation, and the
localisation metrics the Evaluator reports at test."""

import math

import pytest
import torch
from torch.testing import assert_close
from torchmetrics.functional.image import structural_similarity_index_measure

from ae_lightning.autoencoders import AE, VAE, DeepSVDD, Localizes, RestorationAE
from ae_lightning.autoencoders.scoring import gaussian_blur, pixel_map, residual_score, ssim_map
from ae_lightning.batch import Batch
from ae_lightning.errors import ConfigError
from ae_lightning.evaluation import AUPRO, Evaluator, Localisation, MapCalibration, PixelAUROC
from ae_lightning.evaluation import maps as map_module
from ae_lightning.evaluation.maps import PixelCalibration, even_pixels


def test_the_squared_error_map_sums_to_the_smoothed_score_over_channels() -> None:
    torch.manual_seed(0)
    x, reconstruction = torch.rand(3, 3, 12, 10), torch.rand(3, 3, 12, 10)
    found = pixel_map(x, reconstruction, "squared_error", 1.0, (0.0, 1.0))
    assert found.shape == (3, 12, 10)
    # the map averages the channels; the score sums them
    score = residual_score(x, reconstruction, 1.0, "none", 0.0, 1.0)
    assert_close(found.sum((1, 2)) * 3, score)
    assert_close(
        pixel_map(x, reconstruction, "squared_error", 0.0, (0.0, 1.0)), (x - reconstruction).square().mean(1)
    )


def test_the_ssim_map_is_one_minus_torchmetrics_full_ssim_image() -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 1, 20, 24)
    y = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    _, full = structural_similarity_index_measure(
        y, x, data_range=1.0, kernel_size=11, sigma=1.5, return_full_image=True, reduction="none"
    )
    assert_close(ssim_map(x, y, (0.0, 1.0)), 1 - full[:, 0], atol=2e-5, rtol=0)
    # identical images: zero everywhere; the map keeps the image size even below the 11-pixel window
    assert_close(
        ssim_map(x[..., :7, :9], x[..., :7, :9], (0.0, 1.0)), torch.zeros(2, 7, 9), atol=1e-6, rtol=0
    )
    blurred = pixel_map(x, y, "ssim", 1.0, (0.0, 1.0))
    assert_close(blurred, gaussian_blur(ssim_map(x, y, (0.0, 1.0))[:, None], 1.0)[:, 0])


def test_an_autoencoder_localises_and_reads_its_score_off_the_map() -> None:
    torch.manual_seed(0)
    batch = Batch(torch.rand(4, 1, 28, 28))
    model = AE(latent_dim=4, score_smoothing=1.0).eval()
    assert isinstance(model, Localizes) and model.localizes()
    with torch.no_grad():
        found = model.anomaly_map(batch)
        assert found.shape == (4, 28, 28) and found.dtype == torch.float32
        assert_close(found.sum((1, 2)), model.anomaly_score(batch))
        maximum = AE(latent_dim=4, score_smoothing=1.0, score_from_map="max")
        maximum.load_state_dict(model.state_dict())
        assert_close(maximum.eval().anomaly_score(batch), found.flatten(1).amax(1))
        mean = AE(latent_dim=4, map_measure="ssim", score_from_map="mean")
        mean.load_state_dict(model.state_dict())
        ssim = mean.eval().anomaly_map(batch)
        assert_close(mean.anomaly_score(batch), ssim.flatten(1).mean(1))
        assert_close(ssim, ssim_map(batch.inputs, model(batch.inputs), (0.0, 1.0)))
    # vectors have no pixels; a model without a decoder has no map
    assert not AE(latent_dim=2, image_shape=(3,)).localizes()
    assert not isinstance(DeepSVDD(latent_dim=4), Localizes)


def test_a_restoration_model_maps_the_mean_over_its_views() -> None:
    torch.manual_seed(0)
    model = RestorationAE(latent_dim=4, erasures=["rotate"]).eval()
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        expected = torch.stack(
            [(x - model(torch.rot90(x, turns, (-2, -1)))).square().mean(1) for turns in range(4)]
        ).mean(0)
        assert_close(model.anomaly_map(Batch(x)), expected)


@pytest.mark.parametrize(
    ("model", "arguments", "message"),
    [
        (AE, {"map_measure": "l1"}, "map_measure must be one of"),
        (AE, {"score_from_map": "median"}, "score_from_map must be one of"),
        (
            AE,
            {"score_from_map": "max", "image_shape": (3,)},
            "map_measure and score_from_map are about images",
        ),
        (VAE, {"score_from_map": "max"}, "VAE's anomaly score is not a reconstruction error"),
    ],
)
def test_bad_map_arguments_are_refused_in_one_line(model: type, arguments: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        model(latent_dim=2, **arguments)
    assert "\n" not in str(caught.value)


def test_the_pixel_calibration_keeps_normal_images_only() -> None:
    maps = torch.arange(2 * 4 * 4, dtype=torch.float32).view(2, 4, 4)  # image 0: 0..15, image 1: 16..31
    calibration = PixelCalibration(0.5)
    calibration.update(maps, keep=torch.tensor([True, False]))
    found = calibration.calibration()
    # the "higher" 0.5-quantile of 0..15 is 8
    assert found == MapCalibration(0.0, 15.0, 8.0)
    assert MapCalibration.from_dict(found.as_dict()) == found and MapCalibration.from_dict(None) is None
    # a large map is sampled on an even grid: 64 x 64 at most 4096 pixels, 256 x 256 every 4th row and column
    assert even_pixels(torch.zeros(1, 64, 64)).shape == (1, 4096)
    assert even_pixels(torch.zeros(1, 256, 256)).shape == (1, 64 * 64)


def defect_maps(count: int = 6, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Maps that score a square defect higher than the background, with noise, and their masks."""
    generator = torch.Generator().manual_seed(0)
    masks = torch.zeros(count, size, size, dtype=torch.bool)
    for i in range(1, count):  # image 0 is normal
        top, left = 2 * i % (size - 5), 3 * i % (size - 5)
        masks[i, top : top + 4, left : left + 5] = True
    maps = torch.rand(count, size, size, generator=generator) + 0.8 * masks
    return maps, masks


def test_localisation_is_exact_on_small_test_sets_and_binned_on_large_ones(monkeypatch) -> None:
    maps, masks = defect_maps()
    exact_auroc, exact_aupro = PixelAUROC(), AUPRO()
    exact_auroc.update(maps, masks)
    exact_aupro.update(maps, masks)
    calibration = MapCalibration(0.0, 1.0, 0.9)
    metric = Localisation()
    metric.calibrate(calibration, pixels=maps.numel(), device=torch.device("cpu"))
    assert metric.auroc.num_bins is None
    metric.update({"anomaly_map": maps, "gt_mask": masks})
    results = metric.compute()
    assert_close(results["pixel_auroc"], exact_auroc.compute())
    assert_close(results["aupro"], exact_aupro.compute())
    flagged = maps > 0.9
    f1 = 2 * (flagged & masks).sum() / (flagged.sum() + masks.sum())
    assert_close(results["pixel_f1"], f1.float())
    assert 0.8 < results["pixel_auroc"] < 1.0
    # a test set over the limit is binned over 4x the validation range: the same numbers to the bins' width
    monkeypatch.setattr(map_module, "MAX_EXACT_PIXELS", maps.numel() - 1)
    metric.calibrate(calibration, pixels=maps.numel(), device=torch.device("cpu"))
    assert metric.auroc.num_bins == map_module.NUM_BINS and metric.aupro.score_range == (0.0, 4.0)
    metric.update({"anomaly_map": maps, "gt_mask": masks})
    binned = metric.compute()
    assert_close(binned["pixel_auroc"], results["pixel_auroc"], atol=2e-4, rtol=0)
    assert_close(binned["aupro"], results["aupro"], atol=2e-3, rtol=0)
    # without a calibration (nothing validated): exact, and no F1
    metric.calibrate(None, pixels=None, device=torch.device("cpu"))
    metric.update({"anomaly_map": maps, "gt_mask": masks})
    assert set(metric.compute()) == {"pixel_auroc", "aupro"}


def test_the_evaluator_calibrates_on_validation_and_localises_at_test() -> None:
    torch.manual_seed(0)
    model = AE(latent_dim=4).eval()
    evaluator = Evaluator(model, anomaly_quantile=0.9)
    images = torch.rand(6, 1, 28, 28)
    normal = Batch(images, gt_anomaly=torch.zeros(6, dtype=torch.bool))
    evaluator.validation_batch(model, normal)
    results = evaluator.validation_end()
    with torch.no_grad():
        pixels = model.anomaly_map(normal).flatten()
    expected = torch.quantile(pixels.double(), 0.9, interpolation="higher").item()
    assert results["pixel_threshold"] == pytest.approx(expected)
    assert evaluator.map_calibration.low == pytest.approx(pixels.min().item())
    assert evaluator.map_calibration.high == pytest.approx(pixels.max().item())
    masks = torch.zeros(6, 28, 28, dtype=torch.bool)
    masks[3:, 10:16, 8:20] = True
    defective = images.clone()
    defective[masks[:, None]] = 1.0
    test = Batch(defective, gt_anomaly=masks.flatten(1).any(1), gt_mask=masks)
    evaluator.prepare(None, torch.device("cpu"), test_pixels=6 * 28 * 28)
    evaluator.test_batch(model, test)
    found = evaluator.test_end()
    assert {"pixel_auroc", "aupro", "pixel_f1", "pixel_threshold", "auroc"} <= set(found)
    reference = PixelAUROC()
    with torch.no_grad():
        reference.update(model.anomaly_map(test), masks)
    assert_close(found["pixel_auroc"], reference.compute())
    # batches without masks (MNIST) compute no map at test
    evaluator.prepare(None, torch.device("cpu"))
    evaluator.test_batch(model, Batch(images, gt_anomaly=torch.zeros(6, dtype=torch.bool)))
    assert "pixel_auroc" not in evaluator.test_end()
    assert math.isfinite(found["aupro"])


def test_ae_ssim_trains_on_one_minus_ssim_per_pixel() -> None:
    """AE-SSIM (Bergmann et al.): the reconstruction term is (1 - SSIM) times the values of an image, SSIM
    being torchmetrics' (window 11, sigma 1.5, the mean of its same-size map), unclipped."""
    torch.manual_seed(0)
    model = AE(latent_dim=4, backbone="conv", hidden_dims=[8, 16], likelihood="ssim", value_range=(-1.0, 1.0))
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    terms = model.loss_terms(Batch(x))
    with torch.no_grad():
        reconstruction = model(x)
    assert reconstruction.min() >= -1  # the [-1, 1] data get the tanh output, as a gaussian model's
    # torchmetrics' SSIM: the mean of its map over every pixel, the images mirrored at their borders
    expected = structural_similarity_index_measure(
        reconstruction, x, data_range=2.0, kernel_size=11, sigma=1.5, reduction="none"
    )
    assert_close(terms["loss"], (1 - expected) * 28 * 28, atol=1e-3, rtol=1e-4)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = model.loss_terms(Batch(x))["loss"].mean().item()
    for _ in range(30):
        optimizer.zero_grad()
        model.loss_terms(Batch(x))["loss"].mean().backward()
        optimizer.step()
    assert model.loss_terms(Batch(x))["loss"].mean().item() < 0.85 * first  # noise: 784 to 600
    with pytest.raises(ConfigError, match="likelihood 'ssim' compares images"):
        AE(latent_dim=2, image_shape=(3,), likelihood="ssim")
    with pytest.raises(ConfigError, match="likelihood must be 'gaussian', 'bernoulli' or 'ssim'"):
        AE(latent_dim=2, likelihood="l1")
