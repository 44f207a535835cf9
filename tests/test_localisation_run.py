"""Where the anomaly is, through the real command line: a folder with MVTec AD's masks is fitted, tested
(pixel AUROC, AUPRO, pixel F1) and predicted (maps and heat maps) with `configs/folder_anomaly.yaml`."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from ae_lightning.batch import Batch
from ae_lightning.cli import main
from ae_lightning.evaluation import AUPRO, PixelAUROC
from tests.conftest import CONFIGS, read_png, run_folder, tiny_folder

SIZE = 32


def part(rng: np.random.Generator) -> Image.Image:
    """A normal part: a grey disc on a dark background, a little noise."""
    pixels = rng.normal(30, 4, (SIZE, SIZE)).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(pixels).convert("RGB")
    ImageDraw.Draw(image).ellipse([6, 6, 25, 25], fill=(140, 140, 140))
    return image


def write_inspection_set(root: Path) -> Path:
    """train/good (40 parts), test/good (6), test/scratch (6) with a bright scratch each, and its exact mask
    in ground_truth/scratch/<stem>_mask.png."""
    rng = np.random.default_rng(0)
    for folder, count in (("train/good", 40), ("test/good", 6)):
        (root / folder).mkdir(parents=True)
        for i in range(count):
            part(rng).save(root / folder / f"{i:03d}.png")
    (root / "test" / "scratch").mkdir(parents=True)
    (root / "ground_truth" / "scratch").mkdir(parents=True)
    for i in range(6):
        image, mask = part(rng), Image.new("L", (SIZE, SIZE), 0)
        line = [(4 + i, 3), (12 + 2 * i, 28)]
        ImageDraw.Draw(image).line(line, fill=(250, 250, 250), width=2)
        ImageDraw.Draw(mask).line(line, fill=255, width=2)
        image.save(root / "test" / "scratch" / f"{i:03d}.png")
        mask.save(root / "ground_truth" / "scratch" / f"{i:03d}_mask.png")
    return root


def test_folder_anomaly_localises_the_defects_of_a_masked_folder(tmp_path: Path, in_tmp: Path) -> None:
    root = write_inspection_set(tmp_path / "parts")
    config = ["--config", str(CONFIGS / "folder_anomaly.yaml")]
    flags = [*tiny_folder(root, in_tmp / "cache"), "--data.val_fraction=0.2", "--trainer.max_epochs=3"]
    fitted = main(["fit", *config, *flags])
    calibration = fitted.model.evaluator.map_calibration
    assert calibration is not None and calibration.low <= calibration.pixel_threshold <= calibration.high
    checkpoint = run_folder(in_tmp, "folder_anomaly") / "checkpoints" / "last.ckpt"
    saved = torch.load(checkpoint, weights_only=True)["map_calibration"]
    assert saved == calibration.as_dict()

    tested = main(["test", *config, *flags, "--ckpt_path=last"])
    metrics = tested.trainer.callback_metrics
    assert metrics["test/pixel_threshold"].item() == pytest.approx(calibration.pixel_threshold)
    # the logged numbers are those of the checkpoint's maps of the whole test split, measured directly
    model = type(tested.model).load_from_checkpoint(checkpoint).model.eval()
    dataset = tested.datamodule.datasets["test"]
    batch = dataset[torch.arange(len(dataset))]
    assert isinstance(batch, Batch) and batch.gt_mask.shape == (12, SIZE, SIZE)
    with torch.no_grad():
        maps = model.anomaly_map(batch)
    auroc, aupro = PixelAUROC(), AUPRO()
    auroc.update(maps, batch.gt_mask)
    aupro.update(maps, batch.gt_mask)
    assert metrics["test/pixel_auroc"].item() == pytest.approx(auroc.compute().item(), abs=1e-6)
    assert metrics["test/aupro"].item() == pytest.approx(aupro.compute().item(), abs=1e-6)
    flagged, defect = maps > calibration.pixel_threshold, batch.gt_mask
    f1 = 2 * (flagged & defect).sum() / (flagged.sum() + defect.sum())
    assert metrics["test/pixel_f1"].item() == pytest.approx(f1.item(), abs=1e-6)
    # a bright scratch on a grey part is far from what the model rebuilds: it is found
    assert metrics["test/pixel_auroc"] > 0.8
    pictures = run_folder(in_tmp, "folder_anomaly", 1)
    assert read_png(pictures / "anomalies.png").shape[0] == 3 and (pictures / "roc_pr.png").is_file()

    main(["predict", *config, *flags, "--ckpt_path=last", "--heat_maps.max_images=5"])
    predicted = run_folder(in_tmp, "folder_anomaly", 2)
    predictions = torch.load(predicted / "predictions.pt", weights_only=True)
    torch.testing.assert_close(predictions["anomaly_map"], maps)  # every image's map
    heat_maps = sorted((predicted / "anomaly_maps").iterdir())  # the first 5 drawn
    assert [path.name for path in heat_maps] == [f"{i:06d}_00{i}.png" for i in range(5)]
    assert read_png(heat_maps[0]).shape == (3, SIZE, 2 * SIZE + 4)


def test_a_defect_image_without_its_mask_is_one_line_through_the_cli(tmp_path: Path, in_tmp: Path) -> None:
    root = write_inspection_set(tmp_path / "parts")
    (root / "ground_truth" / "scratch" / "002_mask.png").unlink()
    with pytest.raises(SystemExit) as exited:
        main(["fit", "--config", str(CONFIGS / "folder_anomaly.yaml"), *tiny_folder(root, in_tmp / "c")])
    message = str(exited.value.code)
    assert message.startswith("error: the defect image") and "scratch/002.png has no mask" in message
    assert "--data.missing_masks drop" in message and "\n" not in message
    assert not (in_tmp / "runs").exists()


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--model.map_measure=l1", "expected one of 'squared_error', 'ssim'"),
        ("--model.score_from_map=median", "expected one of 'none', 'max', 'mean'"),
        ("--model.likelihood=l2", "expected one of 'gaussian', 'bernoulli', 'ssim'"),
    ],
)
def test_a_bad_map_option_is_one_line_and_writes_nothing(
    tmp_path: Path, in_tmp: Path, capsys: pytest.CaptureFixture, flag: str, message: str
) -> None:
    root = write_inspection_set(tmp_path / "parts")
    with pytest.raises(SystemExit):
        main(
            ["fit", "--config", str(CONFIGS / "folder_anomaly.yaml"), *tiny_folder(root, in_tmp / "c"), flag]
        )
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and message in errors[0], errors
    assert not (in_tmp / "runs").exists()


@pytest.mark.slow
def test_under_ddp_the_localisation_metrics_are_those_of_one_process(tmp_path: Path) -> None:
    """Two processes each test half of the images: the gathered exact metrics are the one process's."""
    from tests.test_scaling import cli

    root = write_inspection_set(tmp_path / "parts")
    config = ["--config", str(CONFIGS / "folder_anomaly.yaml")]
    flags = [*tiny_folder(root, tmp_path / "cache"), "--data.val_fraction=0.2", "--trainer.max_epochs=1"]
    (tmp_path / "fit").mkdir()
    assert cli(["fit", *config, *flags], cwd=tmp_path / "fit").returncode == 0
    checkpoint = run_folder(tmp_path / "fit", "folder_anomaly") / "checkpoints" / "last.ckpt"
    found = []
    for name, more in (("ddp", ["--config", str(CONFIGS / "trainer" / "ddp.yaml"), "--trainer.devices=2"]),
                       ("one", [])):  # fmt: skip
        (tmp_path / name).mkdir()
        done = cli(["test", *config, *more, *flags, f"--ckpt_path={checkpoint}"], cwd=tmp_path / name)
        assert done.returncode == 0, done.stderr[-3000:]
        found.append(
            {
                line.split()[0]: float(line.split()[1])
                for line in done.stdout.splitlines()
                if line.split() and line.split()[0] in ("test/pixel_auroc", "test/aupro", "test/pixel_f1")
            }
        )
    assert set(found[1]) == {"test/pixel_auroc", "test/aupro", "test/pixel_f1"}
    assert found[0] == pytest.approx(found[1], abs=1e-6)
