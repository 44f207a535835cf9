"""Heat maps: an image beside its anomaly map on a fixed colour scale, drawn by `predict` (HeatMapWriter) and
by `cli.py score --maps` from the exported scorer, whose anomaly map equals the torch model's."""

import csv
import json
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image

from ae_lightning import autoencoders, models
from ae_lightning.batch import Batch
from ae_lightning.callbacks import HeatMapWriter
from ae_lightning.cli.entry import run
from ae_lightning.data import ManifoldDataModule, MNISTDataModule
from ae_lightning.evaluation.maps import MapCalibration
from ae_lightning.export.graphs import graph_names
from ae_lightning.export.runtime import ExportedModel
from ae_lightning.export.writer import export_model
from ae_lightning.heat_maps import HEAT_MAP_GAP, heat_map_image, write_heat_maps
from ae_lightning.value_range import scale_pixels, to_unit_interval
from tests.conftest import NUM_TEST, VAL_SIZE, read_png

INFERNO = matplotlib.colormaps["inferno"]


def colour(fraction: float) -> torch.Tensor:
    """matplotlib's inferno colour of `fraction`, as bytes (3,)."""
    return torch.tensor(INFERNO(fraction, bytes=True)[:3], dtype=torch.uint8)


def test_the_heat_map_is_the_image_beside_its_map_on_the_fixed_scale() -> None:
    image = torch.rand(1, 4, 5, generator=torch.Generator().manual_seed(0))
    anomaly_map = torch.full((4, 5), 2.0)
    anomaly_map[0, :] = torch.tensor([1.0, 3.0, 10.0, -5.0, 1.6])  # low, high, above, below, 30 % up
    picture = heat_map_image(image, anomaly_map, low=1.0, high=3.0)
    assert picture.shape == (3, 4, 2 * 5 + HEAT_MAP_GAP) and picture.dtype == torch.uint8
    left = (image * 255).round().to(torch.uint8).expand(3, -1, -1)
    assert torch.equal(picture[:, :, :5], left)
    assert (picture[:, :, 5 : 5 + HEAT_MAP_GAP] == 255).all()  # a white gap
    right = picture[:, :, 5 + HEAT_MAP_GAP :]
    assert torch.equal(right[:, 0, 0], colour(0.0))  # at low
    assert torch.equal(right[:, 0, 1], colour(1.0))  # at high
    assert torch.equal(right[:, 0, 2], colour(1.0))  # above high: clipped
    assert torch.equal(right[:, 0, 3], colour(0.0))  # below low: clipped
    assert torch.equal(right[:, 1, 1], colour(0.5))  # half way
    assert torch.equal(right[:, 0, 4], colour(0.3))  # entry floor(0.3 * 256) = 76, as matplotlib picks it
    assert not torch.equal(colour(0.3), torch.tensor(INFERNO(77, bytes=True)[:3], dtype=torch.uint8))
    assert not torch.equal(colour(0.0), colour(0.5))
    rgb = torch.rand(3, 4, 5, generator=torch.Generator().manual_seed(1))
    colour_left = heat_map_image(rgb, anomaly_map, 1.0, 3.0)[:, :, :5]
    assert torch.equal(colour_left, (rgb * 255).round().to(torch.uint8))


def test_write_heat_maps_names_files_safely_and_scales_each_map_alone_without_a_scale(tmp_path: Path) -> None:
    images = torch.rand(2, 1, 6, 7, generator=torch.Generator().manual_seed(0))
    maps = (
        torch.rand(2, 6, 7, generator=torch.Generator().manual_seed(1))
        * torch.tensor([1.0, 100.0])[:, None, None]
    )
    written = write_heat_maps(tmp_path / "maps", ["000001_a b/c", "../x"], images, maps, None, None)
    assert [path.name for path in written] == ["000001_a_b_c.png", "_x.png"]
    assert sorted(path.name for path in (tmp_path / "maps").iterdir()) == ["000001_a_b_c.png", "_x.png"]
    for path, anomaly_map in zip(written, maps, strict=True):
        right = read_png(path)[:, :, 7 + HEAT_MAP_GAP :]
        assert right.shape == (3, 6, 7)
        # on its own range: its lowest pixel dark, its highest bright, whatever the map's magnitude
        lowest, highest = divmod(anomaly_map.argmin().item(), 7), divmod(anomaly_map.argmax().item(), 7)
        assert torch.equal(right[:, lowest[0], lowest[1]], colour(0.0))
        assert torch.equal(right[:, highest[0], highest[1]], colour(1.0))


def tiny_conv_ae(measure: str, smoothing: float, value_range: tuple[float, float]) -> autoencoders.AE:
    torch.manual_seed(0)
    return autoencoders.AE(
        latent_dim=4, backbone="conv", hidden_dims=[8, 16], image_shape=(1, 16, 16), value_range=value_range,
        map_measure=measure, score_smoothing=smoothing,
    ).eval()  # fmt: skip


CALIBRATION = MapCalibration(low=0.01, high=0.2, pixel_threshold=0.1)


@pytest.mark.parametrize(
    "form", ["torchscript", pytest.param("onnx", marks=pytest.mark.slow)]
)  # ONNX export: about 5 s a graph set
@pytest.mark.parametrize(
    "measure, smoothing, value_range", [("squared_error", 1.0, (0.0, 1.0)), ("ssim", 0.0, (-1.0, 1.0))]
)
def test_the_exported_scorer_gives_the_models_anomaly_map(
    form: str, measure: str, smoothing: float, value_range: tuple[float, float], tmp_path: Path
) -> None:
    if form == "onnx":
        pytest.importorskip("onnxruntime")
    model = tiny_conv_ae(measure, smoothing, value_range)
    export_model(model, form, tmp_path / "out", threshold=0.5, map_calibration=CALIBRATION)
    exported = ExportedModel(tmp_path / "out")
    pixels = torch.randint(
        0, 256, (7, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(2)
    )
    anomaly_score, pred_anomaly, anomaly_map = exported.run("scorer", pixels.numpy())
    batch = Batch(scale_pixels(pixels, model.value_range))
    with torch.no_grad():
        expected_map, expected_score = model.anomaly_map(batch), model.anomaly_score(batch)
    assert anomaly_map.shape == (7, 16, 16) and anomaly_map.dtype == np.float32
    torch.testing.assert_close(torch.from_numpy(anomaly_map), expected_map, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.from_numpy(anomaly_score), expected_score, atol=1e-5, rtol=1e-5)
    assert expected_map.std() > 1e-3  # a map that varies, not a constant that any graph would match
    assert np.array_equal(pred_anomaly, anomaly_score > 0.5)
    spec = json.loads((tmp_path / "out" / "model.json").read_text())
    assert spec["version"] == 3
    assert spec["graphs"]["scorer"]["outputs"] == ["anomaly_score", "pred_anomaly", "anomaly_map"]
    assert "anomaly_map (B, H, W)" in spec["outputs"]["scorer"]
    assert spec["map"] == {"measure": measure, "smoothing": smoothing}
    assert spec["map_calibration"] == {"low": 0.01, "high": 0.2, "pixel_threshold": 0.1}
    assert exported.gives_map and exported.map_scale == (0.01, 0.2)


def svdd_export(folder: Path) -> None:
    """A torchscript export of a Deep SVDD, which gives no map."""
    svdd = autoencoders.DeepSVDD(latent_dim=4, hidden_dims=[16], image_shape=(1, 16, 16))
    svdd.set_centre(torch.ones(4))
    export_model(svdd.eval(), "torchscript", folder, threshold=1.0, map_calibration=CALIBRATION)


def test_a_model_without_a_map_exports_a_scorer_of_two_outputs(tmp_path: Path) -> None:
    svdd_export(tmp_path / "svdd")
    exported = ExportedModel(tmp_path / "svdd")
    outputs = exported.run("scorer", np.zeros((3, 1, 16, 16), dtype=np.uint8))
    assert len(outputs) == 2 and outputs[0].shape == (3,)
    assert exported.spec["graphs"]["scorer"]["outputs"] == ["anomaly_score", "pred_anomaly"]
    assert exported.spec["map"] is None and exported.spec["map_calibration"] is None
    assert not exported.gives_map
    vectors = autoencoders.AE(latent_dim=1, hidden_dims=[8], image_shape=(3,))  # localises no vectors
    assert graph_names(vectors)["scorer"][1] == ["anomaly_score", "pred_anomaly"]


def write_image_folder(folder: Path) -> list[Path]:
    """Three 16x16 gray PNGs, two of the same file name in different folders."""
    generator = torch.Generator().manual_seed(3)
    paths = [folder / "a" / "x.png", folder / "b" / "x.png", folder / "c.png"]
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(torch.randint(0, 256, (16, 16), generator=generator, dtype=torch.uint8).numpy()).save(
            path
        )
    return paths


def test_score_with_maps_writes_a_heat_map_per_image(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`cli.py score --maps` through the real entry point: one PNG per image, named by CSV row and stem,
    the image beside the exported map on model.json's scale; without a calibration each on its own scale."""
    images = tmp_path / "images"
    paths = write_image_folder(images)
    model = tiny_conv_ae("squared_error", 1.0, (0.0, 1.0))
    export_model(model, "torchscript", tmp_path / "model", threshold=0.5, map_calibration=CALIBRATION)
    maps, scores = tmp_path / "maps", tmp_path / "scores.csv"
    run(["score", "--model", str(tmp_path / "model"), "--input", str(images), "--output", str(scores),
         "--maps", str(maps)])  # fmt: skip
    rows = list(csv.DictReader(scores.open()))
    assert [row["path"] for row in rows] == [str(path) for path in paths]
    names = ["000000_x.png", "000001_x.png", "000002_c.png"]
    assert sorted(path.name for path in maps.iterdir()) == names
    pixels = np.stack([np.asarray(Image.open(path))[None] for path in paths])
    _, _, anomaly_map = ExportedModel(tmp_path / "model").run("scorer", pixels)
    for name, image, one_map in zip(names, pixels, anomaly_map, strict=True):
        with Image.open(maps / name) as png:
            assert png.format == "PNG" and png.size == (2 * 16 + HEAT_MAP_GAP, 16)
        expected = heat_map_image(torch.from_numpy(image) / 255, torch.from_numpy(one_map), 0.01, 0.2)
        assert torch.equal(read_png(maps / name), expected)
    assert f"written to {maps}" in capsys.readouterr().err
    export_model(model, "torchscript", tmp_path / "uncalibrated", threshold=0.5)
    run(["score", "--model", str(tmp_path / "uncalibrated"), "--input", str(images), "--output",
         str(tmp_path / "s.csv"), "--maps", str(tmp_path / "own")])  # fmt: skip
    assert "has no map calibration: each heat map is scaled to its own range" in capsys.readouterr().err
    own = read_png(tmp_path / "own" / "000002_c.png")[:, :, 16 + HEAT_MAP_GAP :]
    row, col = divmod(int(anomaly_map[2].argmax()), 16)
    assert torch.equal(own[:, row, col], colour(1.0))


def test_score_with_maps_of_a_model_without_a_map_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    svdd_export(tmp_path / "svdd")
    images = tmp_path / "images"
    write_image_folder(images)
    with pytest.raises(SystemExit) as exit_info:
        run(["score", "--model", str(tmp_path / "svdd"), "--input", str(images), "--output",
             str(tmp_path / "s.csv"), "--maps", str(tmp_path / "maps")])  # fmt: skip
    message = str(exit_info.value.code)
    assert message.startswith("error: ") and "has no anomaly map" in message and "--maps" in message
    assert "\n" not in message
    assert not (tmp_path / "s.csv").exists() and not (tmp_path / "maps").exists()


def predict(tmp_path: Path, name: str, module: models.AE, datamodule, **writer) -> Path:
    """Predicts with a HeatMapWriter on the CPU; the run folder."""
    trainer = Trainer(
        default_root_dir=tmp_path, logger=TensorBoardLogger(tmp_path, name=name), accelerator="cpu",
        callbacks=[HeatMapWriter(write=True, **writer)], enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    trainer.predict(module, datamodule=datamodule)
    return tmp_path / name / "version_0"


def test_predict_writes_a_heat_map_per_image_by_index(tmp_path: Path, data_dir: Path) -> None:
    module = models.AE(latent_dim=4, hidden_dims=[32])
    datamodule = MNISTDataModule(data_dir=data_dir, val_size=VAL_SIZE, batch_size=16)
    with pytest.warns(UserWarning, match="no map calibration in the checkpoint .* so they do not compare"):
        run_folder = predict(tmp_path, "own", module, datamodule)
    names = sorted(path.name for path in (run_folder / "anomaly_maps").iterdir())
    assert names == [f"{index:06d}.png" for index in range(NUM_TEST)]
    assert read_png(run_folder / "anomaly_maps" / "000039.png").shape == (3, 28, 2 * 28 + HEAT_MAP_GAP)
    # with the checkpoint's calibration: every map on its scale, the picture of the image and its map
    first = datamodule.datasets["test"][torch.arange(16)]
    model = module.model.eval()
    with torch.no_grad():
        maps = model.anomaly_map(first)
    low, high = 0.0, maps.median().item()  # half the pixels clip to the brightest colour
    module.evaluator.map_calibration = MapCalibration(low, high, high)
    run_folder = predict(tmp_path, "fixed", module, datamodule, max_images=20)
    assert len(list((run_folder / "anomaly_maps").iterdir())) == 20
    for index in (0, 15):
        expected = heat_map_image(
            to_unit_interval(first.inputs[index], model.value_range), maps[index], low, high
        )
        assert torch.equal(read_png(run_folder / "anomaly_maps" / f"{index:06d}.png"), expected)


def test_predict_of_a_model_without_maps_writes_no_heat_maps(tmp_path: Path) -> None:
    module = models.AE(latent_dim=1, hidden_dims=[8], image_shape=[3], value_range=[-1, 1])
    datamodule = ManifoldDataModule(num_points=300, val_size=50, test_size=50, batch_size=25)
    run_folder = predict(tmp_path, "points", module, datamodule)
    assert not (run_folder / "anomaly_maps").exists()
