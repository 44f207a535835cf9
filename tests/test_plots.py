"""The test pictures: each drawing function's size and numbers, the running top-k and bottom-k the callback
keeps, and the callback writing the one-class pictures at the end of `test`."""

from pathlib import Path

import torch
from lightning.pytorch import Trainer
from torchmetrics.functional.classification import binary_auroc, binary_average_precision

from ae_lightning.batch import Batch
from ae_lightning.callbacks import TestPictures, plots
from ae_lightning.callbacks.test_pictures import Extremes, validation_map_range
from ae_lightning.data import MNISTDataModule
from ae_lightning.evaluation.one_class import squash
from ae_lightning.models import AE
from tests.conftest import VAL_SIZE, read_png


def in_unit_interval(picture: torch.Tensor) -> bool:
    return picture.min().item() >= 0 and picture.max().item() <= 1


def legend_texts(figure, panel: int) -> list[str]:
    return [text.get_text() for text in figure.axes[panel].get_legend().get_texts()]


def panel_pixels(picture: torch.Tensor, row: int, column: int, size: int = 28, gap: int = 0) -> torch.Tensor:
    """The red channel (0-255) at the centres of the `size` x `size` pixels of an image panel of an
    anomalies picture (a PNG read back, (3, H, W) uint8); `gap`: the rows' block gap above it."""
    inner = plots.PANEL - 2 * plots.PANEL_PAD
    top = plots.HEADER + row * plots.PANEL + plots.PANEL_PAD + gap
    left = plots.CAPTION_WIDTH + column * plots.PANEL + plots.PANEL_PAD
    centres = ((torch.arange(size) + 0.5) * inner / size).long()
    return picture[0][top + centres][:, left + centres].long()


def test_each_picture_is_drawn_to_its_stated_size() -> None:
    generator = torch.Generator().manual_seed(0)
    scores, gt_anomaly = torch.rand(60, generator=generator), torch.arange(60) % 3 == 0
    roc_pr = plots.roc_pr_picture(scores, gt_anomaly, threshold=0.5)
    histogram = plots.histogram_picture(scores[~gt_anomaly], scores[gt_anomaly], threshold=0.5)
    scatter = plots.scatter_picture(torch.randn(60, 2, generator=generator), torch.arange(60) % 10)
    images = torch.rand(6, 1, 28, 28, generator=generator)
    anomalies = plots.anomalies_picture(
        images, scores[:6], gt_anomaly[:6], num_most=3, labels=torch.arange(6), reconstructions=images,
        maps=torch.rand(6, 28, 28, generator=generator), gt_masks=torch.rand(6, 28, 28) > 0.5,
    )  # fmt: skip
    assert roc_pr.shape == (3, 480, 1000)
    assert histogram.shape == (3, 420, 760)
    assert scatter.shape == (3, 600, 700)
    # 6 rows of 150 pixels under a 44-pixel header, a 20-pixel gap between the 3 most and 3 least anomalous;
    # a 160-pixel caption column, 4 panels of 150 and a 110-pixel colorbar
    assert anomalies.shape == (3, 44 + 6 * 150 + 20, 160 + 4 * 150 + 110)
    for picture in (roc_pr, histogram, scatter, anomalies):
        assert in_unit_interval(picture)
    # normal (blue) and anomalous (red) bars: their outlines in matplotlib's tab:blue and tab:red
    pixels = {tuple(pixel) for pixel in (histogram * 255).round().long().flatten(1).T.tolist()}
    assert {(31, 119, 180), (214, 39, 40)} <= pixels


def test_roc_and_pr_legends_give_the_metrics_of_a_hand_made_case() -> None:
    """As tests/test_evaluation.py's OneClassMetrics case: scores 10, 40, 35, 80 for normal, normal,
    anomaly, anomaly give AUROC 0.75 and AP (1 + 2/3) / 2; flagging score > 30 flags 40, 35, 80: FPR 1/2,
    TPR 1, precision 2/3. Scores this large would tie at 1 in torchmetrics' sigmoid (AUROC 0.5)."""
    scores, gt_anomaly = torch.tensor([10.0, 40.0, 35.0, 80.0]), torch.tensor([False, False, True, True])
    figure = plots.roc_pr_figure(scores, gt_anomaly, threshold=30.0)
    assert legend_texts(figure, 0) == [
        "AUROC 0.750", "chance (AUROC 0.5)", "threshold 30: FPR 0.50, TPR 1.00"
    ]  # fmt: skip
    assert legend_texts(figure, 1) == [
        "AUPR 0.833", "chance: anomaly rate 0.50", "threshold 30: precision 0.67"
    ]  # fmt: skip
    assert len(legend_texts(plots.roc_pr_figure(scores, gt_anomaly, None), 0)) == 2  # no threshold, no point


def test_roc_legend_equals_torchmetrics_auroc_of_squashed_scores() -> None:
    generator = torch.Generator().manual_seed(1)
    gt_anomaly = torch.rand(200, generator=generator) < 0.3
    scores = 100 + 50 * torch.rand(200, generator=generator) + 20 * gt_anomaly  # all > 37: sigmoid would tie
    auroc = binary_auroc(squash(scores), gt_anomaly.long()).item()
    aupr = binary_average_precision(squash(scores), gt_anomaly.long()).item()
    assert 0.75 < auroc < 1  # the classes overlap, and the ranking is not lost
    figure = plots.roc_pr_figure(scores, gt_anomaly, threshold=None)
    assert legend_texts(figure, 0)[0] == f"AUROC {auroc:.3f}"
    assert legend_texts(figure, 1)[0] == f"AUPR {aupr:.3f}"


def test_kept_extremes_over_batches_are_those_of_all_scores() -> None:
    """Candidates offered batch by batch, as the callback does; the kept rows are, in order, the top-k and
    bottom-k of all the scores at once."""
    generator = torch.Generator().manual_seed(2)
    sizes = [7, 3, 10, 1, 9]
    scores = torch.randperm(sum(sizes), generator=generator).float() / 7  # distinct: no ties
    for k in (4, 50):
        extremes, start = Extremes(k), 0
        for size in sizes:
            batch = {"scores": scores[start : start + size], "position": torch.arange(start, start + size)}
            most, least = extremes.candidates(batch["scores"])
            extremes.add({n: v[most] for n, v in batch.items()}, {n: v[least] for n, v in batch.items()})
            start += size
        count = min(k, len(scores))
        assert torch.equal(extremes.most["position"], scores.topk(count).indices)
        assert torch.equal(extremes.least["position"], scores.topk(count, largest=False).indices)
        assert torch.equal(extremes.most["scores"], scores.sort(descending=True).values[:count])


def test_anomalies_picture_has_a_row_per_image_and_a_mask_column_only_with_masks() -> None:
    images = torch.zeros(5, 1, 28, 28)
    images[0] = 0.5
    masks = torch.zeros(5, 28, 28, dtype=torch.bool)
    masks[0] = True
    scores, gt_anomaly = (
        torch.tensor([5.0, 4.0, 0.1, 0.2, 0.3]),
        torch.tensor([True, True, False, False, True]),
    )
    without = plots.anomalies_picture(images, scores, gt_anomaly, num_most=2, reconstructions=images)
    with_masks = plots.anomalies_picture(
        images, scores, gt_anomaly, num_most=2, reconstructions=images, gt_masks=masks
    )
    # 5 rows of 150 pixels, a 20-pixel gap after the 2 most anomalous; a panel more with masks
    assert without.shape == (3, 44 + 5 * 150 + 20, 160 + 2 * 150)
    assert with_masks.shape == (3, 44 + 5 * 150 + 20, 160 + 3 * 150)
    shown = (with_masks * 255).round()
    assert (panel_pixels(shown, 0, 0) == 128).all()  # the first input, mid-gray
    assert (panel_pixels(shown, 0, 2) == 255).all()  # its mask, all defect: white
    assert (panel_pixels(shown, 1, 2) == 0).all()  # the next one's, none: black


def test_the_callback_writes_the_one_class_pictures(tmp_path: Path, data_dir: Path) -> None:
    """A test pass over 40 tiny MNIST images (3s are normal) in batches of 16: the three one-class pictures,
    and the first row of anomalies.png is the most anomalous image of all 40."""
    module = AE(latent_dim=4, hidden_dims=[16])
    callback = TestPictures(num_extremes=4)
    data = MNISTDataModule(data_dir=data_dir, val_size=VAL_SIZE, batch_size=16, normal_classes=[3])
    trainer = Trainer(
        default_root_dir=tmp_path, logger=False, callbacks=[callback], accelerator="cpu",
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    module.anomaly_threshold = 60.0
    assert validation_map_range(module) is None
    trainer.test(module, data)
    written = {path.name: read_png(path) for path in callback.written}
    assert sorted(written) == [
        "anomalies.png",
        "anomaly_histogram.png",
        "roc_pr.png",
    ]  # no 2-d code, no prior
    assert written["roc_pr.png"].shape == (3, *plots.ROC_PR_SIZE)
    assert written["anomaly_histogram.png"].shape == (3, *plots.HISTOGRAM_SIZE)
    # 8 rows (4 most, 4 least anomalous); input, reconstruction, heat map, a colorbar
    anomalies = written["anomalies.png"]
    assert anomalies.shape == (3, 44 + 8 * 150 + 20, 160 + 3 * 150 + 110)
    test = data.datasets["test"]
    images = test.images.float() / 255
    with torch.no_grad():
        scores = module.model.anomaly_score(Batch(images))
    most, least = scores.argmax(), scores.argmin()
    assert (panel_pixels(anomalies, 0, 0) - test.images[most, 0]).abs().max() <= 1
    assert (panel_pixels(anomalies, 4, 0, gap=plots.BLOCK_GAP) - test.images[least, 0]).abs().max() <= 1
