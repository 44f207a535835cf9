"""Using a trained model: predictions written to files, and the one-class anomaly protocol."""

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.distributions import Normal
from torchmetrics.classification import BinaryAUROC
from torchmetrics.functional.image import structural_similarity_index_measure

from ae_lightning.autoencoders import VAE
from ae_lightning.batch import Batch
from ae_lightning.callbacks import FeatureQuality, PredictionWriter, plots
from ae_lightning.cli import main
from ae_lightning.data import MNISTDataModule
from ae_lightning.errors import ConfigError
from ae_lightning.evaluation.features import knn_accuracy, linear_probe_accuracy
from ae_lightning.evaluation.one_class import OneClassMetrics, ScoreQuantile, squash
from tests.conftest import CONFIGS, NUM_TEST, REPO, VAL_SIZE, read_png, run_folder, tiny

AE, ANOMALY = str(CONFIGS / "ae.yaml"), str(CONFIGS / "anomaly.yaml")


# --- the metrics, on hand-made cases ---


def test_one_class_metrics_match_a_hand_made_case() -> None:
    """Scores 10, 40, 35, 80 for targets normal, normal, anomaly, anomaly: of the 4 (anomaly, normal) pairs
    3 are ranked right (AUROC 0.75); ranked by score the anomalies come at precision 1 (80) and 2/3 (35), so
    AP = (1 + 2/3) / 2; at threshold 30 the flags are 0 1 1 1: TP 2, FP 1, FN 0, F1 = 4 / 5. Scores this
    large would all round to 1 in torchmetrics' sigmoid: the metrics must still rank them."""
    scores, targets = torch.tensor([10.0, 40.0, 35.0, 80.0]), torch.tensor([False, False, True, True])
    without, metrics = OneClassMetrics(), OneClassMetrics()
    without.update(scores, targets)
    assert set(without.compute()) == {"auroc", "aupr"}  # no threshold, no F1
    metrics.update(scores[:2], targets[:2])  # two batches: the state accumulates
    metrics.update(scores[2:], targets[2:])
    metrics.threshold = 30.0
    results = metrics.compute()
    assert results["auroc"].item() == pytest.approx(0.75)
    assert results["aupr"].item() == pytest.approx((1 + 2 / 3) / 2)
    assert results["f1"].item() == pytest.approx(0.8)


def test_squash_keeps_the_order_of_large_scores() -> None:
    scores = torch.tensor([-5.0, 0.0, 100.0, 100.5, 5000.0])
    squashed = squash(scores)
    assert ((squashed > 0) & (squashed < 1)).all() and (squashed.diff() > 0).all()


def test_threshold_is_the_quantile_of_normal_scores() -> None:
    """Scores 1..100 seen in two batches: the 0.95 quantile ("higher") is 96, exceeded by 4% of them."""
    quantile = ScoreQuantile(0.95)
    scores = torch.randperm(100).float() + 1
    quantile.update(scores[:30])
    quantile.update(scores[30:])
    threshold = quantile.compute().item()
    assert threshold == 96.0
    assert (scores > threshold).float().mean().item() <= 0.05
    # the scores left out (anomalies in a validation set) do not count: 1..100 kept, 1000..1099 not
    masked = ScoreQuantile(0.95)
    outliers = torch.arange(1000.0, 1100.0)
    masked.update(torch.cat([scores[:30], outliers]), keep=torch.arange(130) < 30)
    masked.update(scores[30:], keep=torch.ones(70, dtype=torch.bool))
    assert masked.compute().item() == 96.0


@pytest.mark.parametrize("quantile", [0.0, 1.0, 1.5])
def test_a_quantile_outside_0_1_is_refused(quantile: float) -> None:
    with pytest.raises(ConfigError, match="anomaly_quantile"):
        ScoreQuantile(quantile)


# --- the one-class split ---


def test_normal_classes_keep_train_and_val_normal_and_test_whole(data_dir: Path) -> None:
    datamodule = MNISTDataModule(data_dir=data_dir, val_size=VAL_SIZE, normal_classes=[3, 5])
    datamodule.setup("fit")
    whole = MNISTDataModule(data_dir=data_dir, val_size=VAL_SIZE)
    whole.setup("fit")
    for split in ("train", "val"):
        labels = datamodule.datasets[split].labels
        # the split of all images, then filtered: the same images as the full split's 3s and 5s
        expected = whole.datasets[split].labels
        assert torch.equal(labels, expected[(expected == 3) | (expected == 5)])
        assert not datamodule.datasets[split].gt_anomaly.any()
    test = datamodule.datasets["test"]
    assert len(test) == NUM_TEST
    assert torch.equal(test.gt_anomaly, (test.labels != 3) & (test.labels != 5))
    item = test[0]
    assert item.inputs.shape == (1, 28, 28) and bool(item.gt_anomaly) == (int(item.labels) not in (3, 5))


@pytest.mark.parametrize("normal_classes", [[], [10], list(range(10))])
def test_normal_classes_must_leave_some_anomalies(normal_classes: list[int], data_dir: Path) -> None:
    with pytest.raises(ConfigError, match="normal_classes"):
        MNISTDataModule(data_dir=data_dir, normal_classes=normal_classes)


# --- through the real command ---


def read_predictions(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "predictions.pt")


def auroc_by_pairs(scores: torch.Tensor, is_anomaly: torch.Tensor) -> float:
    """The fraction of (anomaly, normal) pairs ranked right, ties counting one half."""
    anomalous, normal = scores[is_anomaly], scores[~is_anomaly]
    difference = anomalous[:, None] - normal[None, :]
    return ((difference > 0).double() + 0.5 * (difference == 0).double()).mean().item()


def test_anomaly_config_fits_tests_and_flags_predictions(data_dir: Path, in_tmp: Path) -> None:
    """fit sets the threshold at the 95th percentile of the validation scores; test logs AUROC, AUPR and F1
    of the checkpoint; predict writes every test image with its flag, score > threshold."""
    fitted = main(["fit", "--config", ANOMALY, *tiny(data_dir)])
    module = fitted.model.eval()
    val = fitted.datamodule.datasets["val"]
    with torch.no_grad():
        val_scores = module.model.anomaly_score(Batch(val.images.float() / 255))
    threshold = module.anomaly_threshold
    assert threshold == pytest.approx(
        torch.quantile(val_scores, 0.95, interpolation="higher").item(), rel=1e-5
    )
    ckpt = run_folder(in_tmp, "anomaly") / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True)["anomaly_threshold"] == threshold

    tested = main(["test", "--config", ANOMALY, *tiny(data_dir), "--ckpt_path", str(ckpt)])
    metrics = tested.trainer.callback_metrics

    main(["predict", "--config", ANOMALY, *tiny(data_dir), "--ckpt_path", str(ckpt)])
    predictions = read_predictions(run_folder(in_tmp, "anomaly", version=2))
    scores, labels = predictions["anomaly_score"], predictions["labels"]
    is_anomaly = labels != 3
    assert torch.equal(predictions["pred_anomaly"], scores > threshold)
    # the AE's scores are deterministic: the logged metrics are those of the predicted scores
    assert metrics["test/auroc"].item() == pytest.approx(auroc_by_pairs(scores, is_anomaly), abs=1e-6)
    flags = predictions["pred_anomaly"]
    true_positives = (flags & is_anomaly).sum().item()
    f1 = 2 * true_positives / (flags.sum().item() + is_anomaly.sum().item())
    assert metrics["test/f1"].item() == pytest.approx(f1)
    assert 0 < metrics["test/aupr"].item() <= 1
    assert metrics["test/anomaly_threshold"].item() == pytest.approx(threshold)


def test_without_normal_classes_test_logs_no_anomaly_metrics(data_dir: Path, in_tmp: Path) -> None:
    tested = main(["fit", "--config", AE, *tiny(data_dir)])
    assert tested.model.anomaly_threshold is None
    assert not any("auroc" in name or "threshold" in name for name in tested.trainer.callback_metrics)


def test_a_bad_anomaly_quantile_exits_with_a_message(data_dir: Path, in_tmp: Path) -> None:
    with pytest.raises(SystemExit, match="anomaly_quantile must lie strictly between 0 and 1"):
        main(["fit", "--config", ANOMALY, *tiny(data_dir), "--model.anomaly_quantile=95"])


def test_predict_writes_one_ordered_file_and_its_csv(data_dir: Path, in_tmp: Path) -> None:
    main(["fit", "--config", AE, *tiny(data_dir)])
    ckpt = run_folder(in_tmp, "ae") / "checkpoints" / "last.ckpt"
    predicted = main(["predict", "--config", AE, *tiny(data_dir), "--ckpt_path", str(ckpt)])
    run = run_folder(in_tmp, "ae", version=1)
    predictions = read_predictions(run)
    # no threshold: no flag; an image autoencoder localises: a map per image
    assert set(predictions) == {"latent", "anomaly_score", "anomaly_map", "labels", "index"}
    assert torch.equal(predictions["index"], torch.arange(NUM_TEST))
    assert torch.equal(predictions["labels"], predicted.datamodule.datasets["test"].labels)
    assert predictions["latent"].shape == (NUM_TEST, 20)
    model = type(predicted.model).load_from_checkpoint(ckpt).model.eval()
    images = Batch(predicted.datamodule.datasets["test"].images.float() / 255)
    with torch.no_grad():
        torch.testing.assert_close(predictions["latent"], model.latent(images))
        torch.testing.assert_close(predictions["anomaly_score"], model.anomaly_score(images))
        torch.testing.assert_close(predictions["anomaly_map"], model.anomaly_map(images))

    with (run / "predictions.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == NUM_TEST and list(rows[0])[:3] == ["index", "labels", "anomaly_score"]
    assert [int(row["labels"]) for row in rows] == predictions["labels"].tolist()
    assert float(rows[5]["latent_19"]) == pytest.approx(predictions["latent"][5, 19].item())


def test_a_listed_prediction_writer_picks_the_formats(data_dir: Path, in_tmp: Path) -> None:
    main(["fit", "--config", AE, *tiny(data_dir)])
    ckpt = run_folder(in_tmp, "ae") / "checkpoints" / "last.ckpt"
    writer = "--trainer.callbacks+=ae_lightning.callbacks.PredictionWriter"
    main(["predict", "--config", AE, *tiny(data_dir), writer, "--trainer.callbacks.formats=[npz]",
          "--ckpt_path", str(ckpt)])  # fmt: skip
    run = run_folder(in_tmp, "ae", version=1)
    assert sorted(path.name for path in run.glob("predictions.*")) == ["predictions.npz", "predictions.pt"]
    arrays, tensors = np.load(run / "predictions.npz"), read_predictions(run)
    for name, tensor in tensors.items():
        assert np.array_equal(arrays[name], tensor.numpy())


def test_an_unknown_prediction_format_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown prediction format"):
        PredictionWriter(formats=["parquet"])


@pytest.mark.slow
def test_ddp_predict_on_two_processes_writes_the_single_process_file(data_dir: Path, in_tmp: Path) -> None:
    """Two CPU processes each predict part of the test set; one file, in dataset order, equal to the
    single-process file."""
    tmp_path = in_tmp
    main(["fit", "--config", AE, *tiny(data_dir)])
    ckpt = str(run_folder(tmp_path, "ae") / "checkpoints" / "last.ckpt")
    # 40 test images in batches of 16 over 2 processes: shares of 20 in batches of 16 and 4
    args = [
        sys.executable,
        str(REPO / "cli.py"),
        "predict",
        "--config",
        AE,
        *tiny(data_dir),
        "--ckpt_path",
        ckpt,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
    ddp = ["--trainer.devices=2", "--trainer.strategy=ddp"]
    for extra in (ddp, []):
        result = subprocess.run(args + extra, capture_output=True, text=True, timeout=240, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        assert ("GLOBAL_RANK: 1, MEMBER: 2/2" in result.stdout + result.stderr) == bool(extra)
    ddp_run, one_run = run_folder(tmp_path, "ae", version=1), run_folder(tmp_path, "ae", version=2)
    assert sorted(p.name for p in ddp_run.glob("predictions.*")) == ["predictions.csv", "predictions.pt"]
    merged, single = read_predictions(ddp_run), read_predictions(one_run)
    assert torch.equal(merged["index"], torch.arange(NUM_TEST))
    assert merged.keys() == single.keys()
    for name in single:
        torch.testing.assert_close(merged[name], single[name], msg=name)
    # the same rows in the same order; the numbers agree to float32 rounding, not bit for bit: each process
    # runs its share in other batch sizes, and with other thread counts, whose sums round differently
    ddp_rows, one_rows = ((run / "predictions.csv").read_text().splitlines() for run in (ddp_run, one_run))
    assert ddp_rows[0] == one_rows[0] and len(ddp_rows) == len(one_rows) == NUM_TEST + 1
    for ddp_row, one_row in zip(ddp_rows[1:], one_rows[1:], strict=True):
        ddp_values, one_values = ddp_row.split(","), one_row.split(",")
        assert ddp_values[:2] == one_values[:2]  # index and label
        expected = pytest.approx([float(value) for value in one_values[2:]], rel=1e-5, abs=1e-6)
        assert [float(value) for value in ddp_values[2:]] == expected


# --- the test NLL of the Bernoulli VAE ---


def bernoulli_vae() -> VAE:
    torch.manual_seed(0)
    return VAE(likelihood="bernoulli", latent_dim=4, hidden_dims=[32]).eval()


def binary_images(count: int = 6) -> torch.Tensor:
    return torch.bernoulli(torch.rand(count, 1, 28, 28, generator=torch.Generator().manual_seed(1)))


def test_nll_with_one_sample_is_minus_the_elbo_on_the_same_draw() -> None:
    model, x = bernoulli_vae(), binary_images()
    torch.manual_seed(3)
    nll = model.negative_log_likelihood(Batch(x), 1)
    torch.manual_seed(3)
    with torch.no_grad():
        mu, logvar = model.encoder(x).chunk(2, dim=1)
        std = (0.5 * logvar).exp()
        z = mu + std * torch.randn_like(mu)  # the draw rsample makes with the same seed
        logits = model.decoder(z)
        log_likelihood = -torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none")
        elbo = (
            log_likelihood.sum((1, 2, 3))
            + Normal(0.0, 1.0).log_prob(z).sum(1)
            - Normal(mu, std).log_prob(z).sum(1)
        )
    torch.testing.assert_close(nll, -elbo)


def test_nll_bound_tightens_as_k_grows_and_chunks_change_nothing() -> None:
    model, x = bernoulli_vae(), Batch(binary_images())
    torch.manual_seed(0)
    means = {
        k: torch.stack([model.negative_log_likelihood(x, k) for _ in range(10)]).mean().item()
        for k in (1, 10, 100)
    }
    assert means[1] > means[10] > means[100]  # an upper bound on the NLL, falling towards it
    # k = 500 decoded 7 draws at a time or all at once: the same estimate up to Monte Carlo noise
    chunked = model.negative_log_likelihood(x, 500, chunk_size=7)
    whole = model.negative_log_likelihood(x, 500, chunk_size=500)
    torch.testing.assert_close(chunked, whole, rtol=0.005, atol=0.0)


def test_a_negative_nll_samples_is_refused() -> None:
    with pytest.raises(ConfigError, match="nll_samples must be >= 0"):
        VAE(nll_samples=-1)


def test_bernoulli_vae_config_logs_the_test_nll(data_dir: Path, in_tmp: Path) -> None:
    config = str(CONFIGS / "vae_bernoulli.yaml")
    main(["fit", "--config", config, *tiny(data_dir)])
    ckpt = str(run_folder(in_tmp, "vae_bernoulli") / "checkpoints" / "last.ckpt")
    tested = main(
        ["test", "--config", config, *tiny(data_dir), "--model.nll_samples=50", "--ckpt_path", ckpt]
    )
    metrics = tested.trainer.callback_metrics
    # 50 importance samples give a tighter bound than the one-sample negative ELBO (recon + analytic KL)
    assert 0 < metrics["test/nll"].item() < (metrics["test/recon"] + metrics["test/kl"]).item()
    off = main(["test", "--config", config, *tiny(data_dir), "--model.nll_samples=0", "--ckpt_path", ckpt])
    assert "test/nll" not in off.trainer.callback_metrics


# --- feature quality ---


def blobs(count: int, seed: int, shift: float = 6.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three well-separated Gaussian blobs in 4-d (class c centred at shift x e_c), labels 0..2."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % 3
    points = torch.randn(count, 4, generator=generator)
    points[torch.arange(count), labels] += shift
    return points, labels


def test_probe_and_knn_classify_separable_blobs_perfectly() -> None:
    (train_z, train_y), (test_z, test_y) = blobs(300, seed=0), blobs(90, seed=1)
    assert linear_probe_accuracy(train_z, train_y, test_z, test_y) == 1.0
    assert knn_accuracy(train_z, train_y, test_z, test_y, k=5, chunk_size=7) == 1.0


def test_probe_and_knn_are_at_chance_on_random_labels() -> None:
    (train_z, _), (test_z, _) = blobs(600, seed=0, shift=0.0), blobs(600, seed=1, shift=0.0)
    generator = torch.Generator().manual_seed(2)
    train_y, test_y = (
        torch.randint(0, 2, (600,), generator=generator),
        torch.randint(0, 2, (600,), generator=generator),
    )
    assert abs(linear_probe_accuracy(train_z, train_y, test_z, test_y) - 0.5) < 0.08
    assert abs(knn_accuracy(train_z, train_y, test_z, test_y) - 0.5) < 0.08


def test_knn_votes_among_the_nearest_points() -> None:
    """On a line: class 0 at 0, 1, 2 and class 1 at 10, 11, 12 and 3. With k = 3, the point 2.6 has the
    neighbours 3 (class 1), 2 and 1 (class 0): class 0 wins; with k = 1 the nearest, 3, gives class 1."""
    train_z = torch.tensor([[0.0], [1.0], [2.0], [10.0], [11.0], [12.0], [3.0]])
    train_y = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    test_z, test_y = torch.tensor([[2.6], [10.5]]), torch.tensor([0, 1])
    assert knn_accuracy(train_z, train_y, test_z, test_y, k=3) == 1.0
    assert knn_accuracy(train_z, train_y, test_z, test_y, k=1) == 0.5


def test_feature_quality_is_logged_by_test_from_the_models_latents(data_dir: Path, in_tmp: Path) -> None:
    fitted = main(["fit", "--config", AE, *tiny(data_dir)])
    ckpt = str(run_folder(in_tmp, "ae") / "checkpoints" / "last.ckpt")
    tested = main(["test", "--config", AE, *tiny(data_dir), "--ckpt_path", ckpt])
    metrics = tested.trainer.callback_metrics
    model = fitted.model.model.eval()
    train, test = (tested.datamodule.datasets[split] for split in ("train", "test"))
    with torch.no_grad():
        train_z, test_z = (model.latent(Batch(split.images.float() / 255)) for split in (train, test))
    expected_probe = linear_probe_accuracy(train_z, train.labels, test_z, test.labels)
    expected_knn = knn_accuracy(train_z, train.labels, test_z, test.labels, k=5)
    assert metrics["test/linear_probe_acc"].item() == pytest.approx(expected_probe)
    assert metrics["test/knn_acc"].item() == pytest.approx(expected_knn)
    # the tiny digits are a square whose place is the class: easy features
    assert expected_knn > 0.5


def test_feature_quality_refuses_bad_options() -> None:
    with pytest.raises(ConfigError, match="knn_k >= 1"):
        FeatureQuality(knn_k=0)


# --- reconstruction quality ---


@pytest.mark.parametrize("name", ["ae", "vae"])
def test_test_logs_mse_psnr_and_ssim_of_the_reconstructions(name: str, data_dir: Path, in_tmp: Path) -> None:
    """The AE's recon term is the summed squared error, so MSE = recon / 784; PSNR = 10 log10(range^2 /
    MSE) with range 1 for [0, 1] data (AE) and 2 for [-1, 1] data (VAE); SSIM that of the checkpoint's
    reconstructions."""
    config = str(CONFIGS / f"{name}.yaml")
    main(["fit", "--config", config, *tiny(data_dir)])
    ckpt = run_folder(in_tmp, name) / "checkpoints" / "last.ckpt"
    tested = main(["test", "--config", config, *tiny(data_dir), "--ckpt_path", str(ckpt)])
    metrics = tested.trainer.callback_metrics
    model = type(tested.model).load_from_checkpoint(ckpt).eval()
    test = tested.datamodule.datasets["test"]
    x = test[torch.arange(len(test))].inputs
    with torch.no_grad():
        reconstruction = model(x)
    mse = (reconstruction - x).square().mean().item()
    data_range = 2.0 if name == "vae" else 1.0
    assert metrics["test/mse"].item() == pytest.approx(mse, rel=1e-5)
    if name == "ae":
        assert metrics["test/mse"].item() == pytest.approx(metrics["test/recon"].item() / 784, rel=1e-5)
    assert metrics["test/psnr"].item() == pytest.approx(10 * math.log10(data_range**2 / mse), rel=1e-5)
    expected_ssim = structural_similarity_index_measure(reconstruction, x, data_range=data_range).item()
    assert metrics["test/ssim"].item() == pytest.approx(expected_ssim, rel=1e-4)
    assert -1 < expected_ssim < 1


# --- pictures ---


def test_scatter_and_histogram_are_drawn_to_size() -> None:
    points, labels = torch.randn(50, 2), torch.arange(50) % 10
    scatter = plots.scatter_picture(points, labels)
    assert scatter.shape == (3, 600, 700) and scatter.min() >= 0 and scatter.max() <= 1
    histogram = plots.histogram_picture(torch.randn(100), torch.randn(30) + 3, threshold=1.0)
    assert histogram.shape == (3, 420, 760) and histogram.min() >= 0 and histogram.max() <= 1
    # the two colours are there: blue outlines of normal scores' bars, red of anomalous ones (tab10's)
    pixels = {tuple(pixel) for pixel in (histogram * 255).round().long().flatten(1).T.tolist()}
    assert {(31, 119, 180), (214, 39, 40)} <= pixels


def test_anomaly_run_draws_the_most_and_least_anomalous_images(data_dir: Path, in_tmp: Path) -> None:
    main(["fit", "--config", ANOMALY, *tiny(data_dir)])
    ckpt = run_folder(in_tmp, "anomaly") / "checkpoints" / "last.ckpt"
    main(["test", "--config", ANOMALY, *tiny(data_dir), "--ckpt_path", str(ckpt)])
    run = run_folder(in_tmp, "anomaly", version=1)
    # 4 most and 4 least anomalous test images, a row each: input, reconstruction, heat map; a colorbar
    assert read_png(run / "anomalies.png").shape == (3, *plots.anomalies_size(8, 3, 4, with_colorbar=True))
    assert read_png(run / "roc_pr.png").shape == (3, 480, 1000)
    assert read_png(run / "anomaly_histogram.png").shape == (3, 420, 760)


def test_a_2d_vae_draws_an_interpolation_grid_and_a_latent_scatter(data_dir: Path, in_tmp: Path) -> None:
    config = str(CONFIGS / "vae.yaml")
    main(["fit", "--config", config, *tiny(data_dir), "--model.latent_dim=2"])
    ckpt = run_folder(in_tmp, "vae") / "checkpoints" / "last.ckpt"
    main(["test", "--config", config, *tiny(data_dir), "--model.latent_dim=2", "--ckpt_path", str(ckpt)])
    run = run_folder(in_tmp, "vae", version=1)
    # 8 pairs, each: image, 8 decoded codes, image
    assert read_png(run / "interpolation.png").shape == (3, 8 * 30 + 2, 10 * 30 + 2)
    assert read_png(run / "latent_scatter.png").shape == (3, 600, 700)
    for name in ("anomalies", "roc_pr", "anomaly_histogram"):  # no anomaly targets, no anomaly pictures
        assert not (run / f"{name}.png").exists()


def logged_test_metrics(run: Path) -> dict[str, float]:
    """The test metrics a CSVLogger wrote (one row at the end of `test`)."""
    with (run / "metrics.csv").open() as file:
        rows = list(csv.DictReader(file))
    return {
        name: float(value)
        for row in rows
        for name, value in row.items()
        if value and name.startswith("test/")
    }


@pytest.mark.slow
@pytest.mark.parametrize("one_class", [False, True])
def test_ddp_test_metrics_equal_the_single_process_ones(
    one_class: bool, data_dir: Path, in_tmp: Path
) -> None:
    """`test` on 2 CPU processes logs the metrics of the whole test set: reconstruction quality, feature
    quality (latents gathered from both processes) and, one-class, AUROC, AUPR and F1 (torchmetrics states
    reduced across processes), as one process does."""
    extra = ["--data.normal_classes=[3]"] if one_class else []
    main(["fit", "--config", AE, *tiny(data_dir), *extra])
    ckpt = str(run_folder(in_tmp, "ae") / "checkpoints" / "last.ckpt")
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
    metrics = {}
    for name, devices in (("ddp", ["--trainer.devices=2", "--trainer.strategy=ddp"]), ("one", [])):
        logger = ["--trainer.logger=lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir=csv",
                  f"--trainer.logger.name={name}"]  # fmt: skip
        args = ["test", "--config", AE, *tiny(data_dir), *extra, *logger, *devices, "--ckpt_path", ckpt]
        result = subprocess.run(
            [sys.executable, str(REPO / "cli.py"), *args],
            capture_output=True,
            text=True,
            timeout=240,
            env=env,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        metrics[name] = logged_test_metrics(in_tmp / "csv" / name / "version_0")
    expected = {"test/mse", "test/psnr", "test/ssim"} | (
        {"test/auroc", "test/aupr", "test/f1"} if one_class else {"test/linear_probe_acc", "test/knn_acc"}
    )
    assert expected <= set(metrics["one"])
    assert metrics["ddp"].keys() == metrics["one"].keys()
    for name, value in metrics["one"].items():
        assert metrics["ddp"][name] == pytest.approx(value, rel=1e-5), name


# --- the Evaluator, alone (no Trainer) ---


def test_evaluator_sets_the_threshold_on_normal_validation_scores_and_scores_the_test() -> None:
    """Validation collects the scores of normal images only and sets the threshold at their quantile; test
    updates AUROC, AUPR and F1 at that threshold, and the reconstruction metrics, over all batches."""
    from ae_lightning.autoencoders import AE as TorchAE
    from ae_lightning.evaluation import Evaluator

    torch.manual_seed(0)
    model = TorchAE(latent_dim=4, hidden_dims=[16]).eval()
    evaluator = Evaluator(model, anomaly_quantile=0.9)
    images = torch.rand(40, 1, 28, 28)
    is_anomaly = torch.arange(40) % 4 == 0
    images[is_anomaly] = 1.0  # anomalies: white images, far from the rest
    batches = [Batch(images[i : i + 10], gt_anomaly=is_anomaly[i : i + 10]) for i in range(0, 40, 10)]
    for batch in batches:
        evaluator.validation_batch(model, batch)
    results = evaluator.validation_end()
    with torch.no_grad():
        scores = model.anomaly_score(Batch(images))
    expected = torch.quantile(scores[~is_anomaly].double(), 0.9, interpolation="higher").item()
    assert results["anomaly_threshold"] == pytest.approx(expected) == evaluator.threshold
    assert evaluator.validation_end() == {}  # what was collected is reset

    for batch in batches:
        evaluator.test_batch(model, batch)
    logged = evaluator.test_end()
    assert set(logged) == {"mse", "psnr", "ssim", "auroc", "aupr", "f1", "anomaly_threshold"}
    with torch.no_grad():
        reconstruction = model(images)
    torch.testing.assert_close(logged["mse"], (reconstruction - images).square().mean())
    assert logged["auroc"].item() == pytest.approx(BinaryAUROC()(squash(scores), is_anomaly.long()).item())
    flags = scores > evaluator.threshold
    f1 = 2 * (flags & is_anomaly).sum() / (flags.sum() + is_anomaly.sum())
    assert logged["f1"].item() == pytest.approx(f1.item())
    assert evaluator.test_end() == {}  # what was collected is reset


def test_evaluator_reports_a_models_own_statistics_and_the_nll_where_it_applies() -> None:
    from ae_lightning.evaluation import Evaluator

    torch.manual_seed(0)
    model = VAE(latent_dim=3, hidden_dims=[16], likelihood="bernoulli", nll_samples=5).eval()
    evaluator = Evaluator(model)
    batch = Batch(torch.bernoulli(torch.rand(12, 1, 28, 28)))
    evaluator.validation_batch(model, batch)
    assert set(evaluator.validation_end()) == {"active_units"}  # no anomaly targets: no threshold
    evaluator.test_batch(model, batch)
    logged = evaluator.test_end()
    assert "nll" in logged and "auroc" not in logged
    assert torch.isfinite(logged["nll"])
    gaussian = VAE(latent_dim=3, hidden_dims=[16])  # known only up to a constant: no NLL
    gaussian_evaluator = Evaluator(gaussian)
    gaussian_evaluator.test_batch(gaussian, batch)
    assert "nll" not in gaussian_evaluator.test_end()


def test_a_metric_of_one_class_is_added_by_one_line_of_the_command(data_dir: Path, in_tmp: Path) -> None:
    """docs/architecture.md's recipe: a class naming what it reads, listed on the command line (or in the
    config), is measured at test beside the defaults, over the whole set."""
    metric = '--model.metrics+={"class_path": "tests.metrics.WorstReconstruction"}'
    fitted = main(["fit", "--config", AE, *tiny(data_dir), metric])
    names = [type(m).__name__ for m in fitted.model.evaluator.metrics]
    assert names == ["Reconstruction", "OneClass", "Localisation", "WorstReconstruction"]
    tested = main(["test", "--config", AE, *tiny(data_dir), metric, "--ckpt_path=last"])
    model = tested.model.model.eval()
    test = tested.datamodule.datasets["test"]
    with torch.no_grad():
        batch = test[torch.arange(len(test))]
        worst = (model.reconstruct(batch) - batch.inputs).square().flatten(1).mean(1).max()
    assert tested.trainer.callback_metrics["test/worst_mse"].item() == pytest.approx(worst.item(), rel=1e-5)
    assert "test/mse" in tested.trainer.callback_metrics  # the defaults still there


def test_the_default_metrics_follow_the_models_capabilities() -> None:
    from ae_lightning.autoencoders import AE as TorchAE
    from ae_lightning.autoencoders import VQVAE as TorchVQVAE
    from ae_lightning.evaluation import default_metrics

    def names(model) -> list[str]:
        return [type(metric).__name__ for metric in default_metrics(model)]

    assert names(TorchAE(latent_dim=4, hidden_dims=[16])) == ["Reconstruction", "OneClass", "Localisation"]
    bernoulli = VAE(latent_dim=3, hidden_dims=[16], likelihood="bernoulli")
    generative = ["OneClass", "Localisation", "Generation", "ActiveUnits"]
    assert names(bernoulli) == ["Reconstruction", "NegativeLogLikelihood", *generative]
    assert names(VAE(latent_dim=3, hidden_dims=[16])) == ["Reconstruction", *generative]
    vectors = VAE(latent_dim=1, hidden_dims=[8], image_shape=(3,), value_range=(-1, 1))
    # the samples' FID compares images; vectors have no pixels to map
    assert "Generation" not in names(vectors) and "Localisation" not in names(vectors)
    vqvae = TorchVQVAE(latent_dim=8, code_dim=4, hidden_dims=[16])
    assert names(vqvae) == ["Reconstruction", "OneClass", "Localisation", "CodeUsage"]
    spiral = TorchAE(latent_dim=1, hidden_dims=[8], image_shape=(3,), value_range=(-1, 1))
    assert default_metrics(spiral)[0].ssim is None  # no SSIM of vectors


@pytest.mark.slow
def test_the_zoo_benchmark_runs_every_model_under_its_protocol_and_resumes(
    data_dir: Path, tmp_path: Path
) -> None:
    """benchmarks/zoo.py on the tiny data: two models, one epoch, the table and the JSON; a second run keeps
    what the first measured; every exported model has its config there."""
    import json
    import subprocess
    import sys

    import ae_lightning.models
    from benchmarks.zoo import CONFIGS
    from tests.conftest import REPO, VAL_SIZE
    from tests.variants import modules

    assert set(CONFIGS) == {cls.__name__ for cls in modules()}
    assert all((REPO / "configs" / config).is_file() for config in CONFIGS.values())
    out = tmp_path / "zoo.json"
    command = [sys.executable, str(REPO / "benchmarks" / "zoo.py"), f"--data-dir={data_dir}", "--epochs=1",
               "--nll-samples=5", f"--val-size={VAL_SIZE}", "--models", "VAE", "WAE", f"--out={out}",
               "--extra=--data.batch_size=16", "--extra=--trainer.accelerator=cpu",
               "--samplers", "normal", "gmm", "vamp"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text())["results"]
    assert (
        set(results) == {"VAE", "WAE"} and results["VAE"]["test/fid"] >= 0 and results["VAE"]["peak_mb"] > 0
    )
    assert "test/nll" not in results["WAE"] and results["WAE"]["fit_seconds_per_epoch"] > 0
    assert "| VAE |" in done.stdout and "| model | MSE | NLL | FID |" in done.stdout
    # a sampler column where the model can use it (vamp: neither has a VampPrior)
    assert {key for key in results["WAE"] if key.startswith("fid_")} == {"fid_normal", "fid_gmm"}
    assert "| model | normal | gmm | vamp |" in done.stdout
    again = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert "done before, kept" in again.stdout and json.loads(out.read_text())["results"] == results
    other = subprocess.run(
        [*command, "--epochs=2"], capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    assert other.returncode == 1 and "holds a sweep of 1 epochs" in other.stderr  # not mixed into one table
    assert ae_lightning.models.VAE is not None
