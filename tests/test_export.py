"""Export: every config's model fitted, exported to ONNX and TorchScript, and run by onnxruntime and
TorchScript, gives the checkpoint's codes, reconstructions and scores; `cli.py score` gives predict's."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from ae_lightning.autoencoders import Reconstructs
from ae_lightning.cli import main
from ae_lightning.export.runtime import ExportedModel
from ae_lightning.value_range import scale_pixels
from tests.conftest import CONFIGS, REPO, run_and_fail, run_folder, tiny_for

#: configs whose parity runs in the default test run (an image model and a folder's); the others, the
#: conditional and quantised graphs among them, are marked slow
FAST = {"vae", "folder_anomaly"}
ALL_CONFIGS = sorted(path.stem for path in CONFIGS.glob("*.yaml"))
#: the measured relative differences, printed at the end of the parity tests (pytest -s shows them)
RELATIVE_DIFFERENCES: dict[str, float] = {}


def relative_difference(exported: np.ndarray, expected: torch.Tensor) -> float:
    """max |exported - expected| / max |expected|: the largest error relative to the output's scale (an
    element-wise ratio would divide float32 rounding by codes that happen to be near zero)."""
    expected = expected.detach().double()
    difference = (torch.from_numpy(np.asarray(exported)).double() - expected).abs()
    return (difference.max() / expected.abs().max().clamp(min=1e-12)).item()


def fit_and_export(config: str, data_dir: Path, in_tmp: Path) -> tuple[object, list[str]]:
    """Fits `config` for one tiny epoch, exports both formats; returns the fitted CLI and the flags."""
    path = CONFIGS / f"{config}.yaml"
    flags = ["--config", str(path), *tiny_for(path, data_dir)]
    fitted = main(["fit", *flags])
    for form in ("onnx", "torchscript"):
        main(["export", *flags, "--ckpt_path=last", f"--format={form}", f"--output={in_tmp / form}"])
    return fitted, flags


@pytest.mark.parametrize(
    "config", [pytest.param(c, marks=() if c in FAST else pytest.mark.slow) for c in ALL_CONFIGS]
)
def test_exported_graphs_give_the_checkpoints_codes_reconstructions_and_scores(
    config: str, data_dir: Path, in_tmp: Path
) -> None:
    fitted, _ = fit_and_export(config, data_dir, in_tmp)
    checkpoint = run_folder(in_tmp, config) / "checkpoints" / "last.ckpt"
    module = type(fitted.model).load_from_checkpoint(checkpoint)
    model, threshold = module.model.eval(), module.anomaly_threshold
    dataset = fitted.datamodule.datasets["test"]
    rows = torch.arange(min(13, len(dataset)))  # 13: not the export's example batch
    batch = dataset[rows].to("cpu")
    conditional = ("labels",) if config == "cvae" else ()
    if len(model.image_shape) == 3:  # images: the graphs take the uint8 pixels and scale them themselves
        pixels = dataset.images[rows if dataset.rows is None else dataset.rows[rows]].cpu()
        binarized = bool(fitted.datamodule.hparams.get("binarize"))  # the pixels are 0 or 255 then
        batch = batch.with_inputs(scale_pixels(pixels, model.value_range, "threshold" if binarized else None))
        inputs = pixels.numpy()
    else:
        inputs = batch.inputs.numpy()
    decodes = isinstance(model, Reconstructs)  # a model without a decoder exports the encoder and scorer
    with torch.no_grad():
        expected = {"latent": model.latent(batch), "anomaly_score": model.anomaly_score(batch)}
        if decodes:
            expected["reconstruction"] = model.reconstruct(batch)
    labels = [batch.labels.long().numpy()] if conditional else []
    for form in ("onnx", "torchscript"):
        exported = ExportedModel(in_tmp / form)
        assert exported.spec["input"]["shape"] == list(model.image_shape)
        assert exported.spec["input"]["dtype"] == str(inputs.dtype)
        assert exported.spec["threshold"] == threshold
        assert len(exported.spec["checkpoint"]["sha256"]) == 64
        assert ("decoder" in exported.files) == decodes
        (latent,) = exported.run("encoder", inputs, *labels)
        anomaly_score, pred_anomaly, *anomaly_map = exported.run("scorer", inputs, *labels)
        measured = {
            "latent": relative_difference(latent, expected["latent"]),
            "anomaly_score": relative_difference(anomaly_score, expected["anomaly_score"]),
        }
        if anomaly_map:  # the scorer of a model that localises gives its anomaly map too
            with torch.no_grad():
                measured["anomaly_map"] = relative_difference(anomaly_map[0], model.anomaly_map(batch))
        if decodes:
            (reconstruction,) = exported.run("decoder", latent, *labels)
            measured["reconstruction"] = relative_difference(reconstruction, expected["reconstruction"])
        RELATIVE_DIFFERENCES[f"{config}/{form}"] = max(measured.values())
        limits = dict.fromkeys(measured, 1e-5)
        if "anomaly_map" in measured and model.score_shape.measure == "ssim":
            # SSIM's variances are means of squares less squared means: where a window's variance is far
            # below its squared mean, the float32 rounding of either (summed in another order by ONNX) grows
            # to ~1e-5 of the map's scale
            limits["anomaly_map"] = 1e-4
        assert all(measured[name] <= limits[name] for name in measured), (form, measured)
        if threshold is not None:
            assert np.array_equal(pred_anomaly, (expected["anomaly_score"] > threshold).numpy())
        (single,) = exported.run("encoder", inputs[:1], *[array[:1] for array in labels])  # any batch size
        assert single.shape == (1, model.latent_dim)
        if form == "onnx":
            for part in exported.files:
                onnx.checker.check_model(str(in_tmp / form / f"{part}.onnx"), full_check=True)
                graph = onnx.load(str(in_tmp / form / f"{part}.onnx")).graph
                names = exported.spec["graphs"][part]
                assert [i.name for i in graph.input] == names["inputs"]
                assert [o.name for o in graph.output] == names["outputs"]
    mine = {key: value for key, value in RELATIVE_DIFFERENCES.items() if key.startswith(f"{config}/")}
    print(f"\nlargest relative difference: {mine}")


@pytest.mark.slow  # whole runs through the CLI: in the slow set (CI runs it), to keep the quick one quick
def test_exported_files_hold_no_training_only_parts(data_dir: Path, in_tmp: Path) -> None:
    """The VQ-VAE's codebook running statistics (EMA counts and sums, usage) are training-only."""
    fit_and_export("vqvae_conv", data_dir, in_tmp)
    training_only = ("ema_count", "ema_code_sum", "usage", "optimizer")
    for part in ("encoder", "decoder", "scorer"):
        graph = onnx.load(str(in_tmp / "onnx" / f"{part}.onnx"))
        names = [initializer.name for initializer in graph.graph.initializer]
        assert names and not [name for name in names if any(word in name for word in training_only)]
        frozen = torch.jit.load(str(in_tmp / "torchscript" / f"{part}.pt"))
        assert not [name for name, _ in frozen.named_buffers() if any(w in name for w in training_only)]
        assert not list(frozen.parameters())  # frozen: the weights are constants of the graph


@pytest.mark.parametrize(
    "config", ["anomaly", *(pytest.param(c, marks=pytest.mark.slow) for c in ("one_class", "deep_svdd"))]
)
def test_score_gives_predicts_scores_without_lightning(config: str, data_dir: Path, in_tmp: Path) -> None:
    """`cli.py score` on the test IDX file, through the real entry point, in a process that must not import
    Lightning, gives the scores and decisions `predict` wrote: for the plain AE, the shaped score of
    one_class.yaml and Deep SVDD's distance (no decoder)."""
    flags = ["--config", str(CONFIGS / f"{config}.yaml"), *tiny_for(CONFIGS / f"{config}.yaml", data_dir)]
    main(["fit", *flags])
    main(["predict", *flags, "--ckpt_path=last"])
    main(["export", *flags, "--ckpt_path=last", f"--output={in_tmp / 'exported'}"])
    predicted = list(csv.DictReader((run_folder(in_tmp, config, 1) / "predictions.csv").open()))
    check = (
        "import runpy, sys; sys.argv = sys.argv[1:]\n"
        "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "finally:\n"
        "    assert not [m for m in sys.modules if m.split('.')[0] == 'lightning'], 'imported lightning'"
    )
    idx = data_dir / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    output = in_tmp / "scores.csv"
    subprocess.run(
        [sys.executable, "-c", check, str(REPO / "cli.py"), "score", f"--model={in_tmp / 'exported'}",
         f"--input={idx}", f"--output={output}"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    scored = list(csv.DictReader(output.open()))
    assert len(scored) == len(predicted) == 40
    for row, prediction in zip(scored, predicted, strict=True):
        assert row["index"] == prediction["index"]
        assert float(row["anomaly_score"]) == pytest.approx(float(prediction["anomaly_score"]), rel=1e-5)
        assert row["pred_anomaly"] == prediction["pred_anomaly"]


def test_bad_export_input_is_one_line(data_dir: Path, in_tmp: Path, capsys) -> None:
    flags = ["--config", str(CONFIGS / "ae.yaml"), *tiny_for(CONFIGS / "ae.yaml", data_dir)]
    main(["fit", *flags])
    export = ["export", *flags, "--ckpt_path=last", f"--output={in_tmp / 'out'}"]
    main(export)
    before = (in_tmp / "out" / "model.json").read_text()
    line = run_and_fail(export, capsys)
    assert "exists" in line and "--overwrite" in line
    assert (in_tmp / "out" / "model.json").read_text() == before  # nothing lost
    main([*export, "--overwrite=true", "--format=torchscript"])
    assert json.loads((in_tmp / "out" / "model.json").read_text())["format"] == "torchscript"
    assert "--ckpt_path" in run_and_fail(["export", *flags, f"--output={in_tmp / 'other'}"], capsys)
    not_a_checkpoint = in_tmp / "weights.ckpt"
    torch.save({"hyper_parameters": {}}, not_a_checkpoint)
    line = run_and_fail(
        ["export", *flags, f"--ckpt_path={not_a_checkpoint}", f"--output={in_tmp / 'x'}"], capsys
    )
    assert "weights.ckpt" in line
    assert not (in_tmp / "other").exists() and not (in_tmp / "x").exists()
    assert not list(in_tmp.glob(".*.tmp"))


def test_scoring_the_wrong_shape_or_a_missing_extra_is_one_line(
    data_dir: Path, in_tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from ae_lightning.errors import ConfigError
    from ae_lightning.export import score
    from ae_lightning.export.writer import require_onnx

    flags = ["--config", str(CONFIGS / "ae.yaml"), *tiny_for(CONFIGS / "ae.yaml", data_dir)]
    main(["fit", *flags])
    main(["export", *flags, "--ckpt_path=last", f"--output={in_tmp / 'out'}"])
    wrong = in_tmp / "rgb.npy"
    np.save(wrong, np.zeros((3, 3, 32, 32), dtype=np.uint8))
    with pytest.raises(SystemExit) as exit_info:
        score.main(["--model", str(in_tmp / "out"), "--input", str(wrong), "--output", str(in_tmp / "s.csv")])
    assert "shape [3, 32, 32], the model takes [1, 28, 28]" in str(exit_info.value.code)
    assert not (in_tmp / "s.csv").exists()
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if the extra were not installed
    with pytest.raises(ConfigError, match=r'onnxruntime is missing.*pip install -e "\.\[export\]"'):
        require_onnx()


def test_the_readme_example_runs_the_onnx_encoder_with_onnxruntime_alone(
    data_dir: Path, in_tmp: Path
) -> None:
    """The README's Python example, run as written on an export of ae.yaml."""
    flags = ["--config", str(CONFIGS / "ae.yaml"), *tiny_for(CONFIGS / "ae.yaml", data_dir)]
    main(["fit", *flags])
    main(["export", *flags, "--ckpt_path=last", f"--output={in_tmp / 'exported'}"])
    readme = (REPO / "README.md").read_text()
    example = readme.split("```python\n")[1].split("```")[0]
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    assert namespace["latent"].shape == (8, 20)
    model = ExportedModel(in_tmp / "exported")
    pixels = namespace["pixels"]
    (expected,) = model.run("encoder", model.model_input(pixels))
    np.testing.assert_allclose(namespace["latent"], expected, rtol=1e-6)


def test_score_of_a_folder_gives_predicts_scores_by_path(data_dir: Path, in_tmp: Path) -> None:
    """A model trained on a folder scores a folder of files, fitted as its datamodule fitted them (the
    images here are of several sizes and modes): the scores predict wrote for the same paths."""
    from ae_lightning.export.score import score

    config = CONFIGS / "folder_anomaly.yaml"
    flags = ["--config", str(config), *tiny_for(config, data_dir)]
    main(["fit", *flags])
    main(["predict", *flags, "--ckpt_path=last"])
    main(["export", *flags, "--ckpt_path=last", "--format=torchscript", f"--output={in_tmp / 'exported'}"])
    predicted = {
        row["path"]: float(row["anomaly_score"])
        for row in csv.DictReader((run_folder(in_tmp, "folder_anomaly", 1) / "predictions.csv").open())
    }
    assert score(in_tmp / "exported", data_dir / "inspection" / "test", in_tmp / "scores.csv") == len(
        predicted
    )
    scored = {
        row["path"]: float(row["anomaly_score"]) for row in csv.DictReader((in_tmp / "scores.csv").open())
    }
    assert scored.keys() == predicted.keys()
    for path, value in scored.items():
        assert value == pytest.approx(predicted[path], rel=1e-5), path


class _FloatEncoder(torch.nn.Module):
    """The encoder graph as exports of model.json version 1 traced it: floats in the value range in."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.code(images)


class _FloatScorer(_FloatEncoder):
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from ae_lightning.batch import Batch

        score = self.model.anomaly_score(Batch(images)).float()
        return score, score > 1e9


@pytest.mark.slow  # whole runs through the CLI: in the slow set (CI runs it), to keep the quick one quick
def test_a_folder_exported_before_version_2_still_scores(data_dir: Path, in_tmp: Path) -> None:
    """An export of model.json version 1 (graphs of float inputs in the value range, named images, code,
    score, is_anomaly) is still run, its pixels scaled outside the graph, to the scores of a new export."""
    from ae_lightning.export.score import score

    fitted, _ = fit_and_export("vae", data_dir, in_tmp)
    model = fitted.model.model.cpu().eval()
    old = in_tmp / "version_1"
    old.mkdir()
    example = torch.zeros(2, *model.image_shape)
    for name, module in (("encoder", _FloatEncoder(model)), ("scorer", _FloatScorer(model))):
        with torch.no_grad():
            traced = torch.jit.freeze(torch.jit.trace(module, (example,), check_trace=False).eval())
        torch.jit.save(traced, str(old / f"{name}.pt"))
    spec = json.loads((in_tmp / "torchscript" / "model.json").read_text())
    low, high = model.value_range
    spec |= {"version": 1, "files": {"encoder": "encoder.pt", "scorer": "scorer.pt"}}
    spec["input"] = {"shape": spec["input"]["shape"], "dtype": "float32", "value_range": [low, high],
                     "from_uint8": f"x = pixel / 255 * {high - low:g} - 1", "layout": "NCHW"}  # fmt: skip
    del spec["graphs"]
    (old / "model.json").write_text(json.dumps(spec))
    idx = data_dir / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    for folder in (old, in_tmp / "torchscript"):
        score(folder, idx, folder / "scores.csv")
    old_scores, new_scores = (
        [float(row["anomaly_score"]) for row in csv.DictReader((folder / "scores.csv").open())]
        for folder in (old, in_tmp / "torchscript")
    )
    assert len(old_scores) == 40 and old_scores == pytest.approx(new_scores, rel=1e-5)
