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

from ae_lightning.cli import main
from ae_lightning.export.runtime import ExportedModel
from tests.conftest import CONFIGS, REPO, run_and_fail, run_folder, tiny_for

#: configs whose parity runs in the default test run (one per kind of graph); the others are marked slow
FAST = {"vae", "cvae", "vqvae_conv", "folder_anomaly"}
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
    batch = dataset[torch.arange(min(13, len(dataset)))].to("cpu")  # 13: not the export's example batch
    conditional = ("labels",) if config == "cvae" else ()
    with torch.no_grad():
        expected = {
            "code": model.latent(batch),
            "reconstruction": model.reconstruct(batch),
            "score": model.anomaly_score(batch),
        }
    labels = [batch.labels.long().numpy()] if conditional else []
    images = batch.images.numpy()
    for form in ("onnx", "torchscript"):
        exported = ExportedModel(in_tmp / form)
        assert exported.spec["input"]["shape"] == list(model.image_shape)
        assert exported.spec["threshold"] == threshold
        assert len(exported.spec["checkpoint"]["sha256"]) == 64
        (code,) = exported.run("encoder", images, *labels)
        (reconstruction,) = exported.run("decoder", code, *labels)
        score, is_anomaly = exported.run("scorer", images, *labels)
        measured = {
            "code": relative_difference(code, expected["code"]),
            "reconstruction": relative_difference(reconstruction, expected["reconstruction"]),
            "score": relative_difference(score, expected["score"]),
        }
        RELATIVE_DIFFERENCES[f"{config}/{form}"] = max(measured.values())
        assert max(measured.values()) <= 1e-5, (form, measured)
        if threshold is not None:
            assert np.array_equal(is_anomaly, (expected["score"] > threshold).numpy())
        (single,) = exported.run("encoder", images[:1], *[array[:1] for array in labels])  # any batch size
        assert single.shape == (1, model.latent_dim)
        if form == "onnx":
            for part in ("encoder", "decoder", "scorer"):
                onnx.checker.check_model(str(in_tmp / form / f"{part}.onnx"), full_check=True)
    mine = {key: value for key, value in RELATIVE_DIFFERENCES.items() if key.startswith(f"{config}/")}
    print(f"\nlargest relative difference: {mine}")


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


def test_score_gives_predicts_scores_without_lightning(data_dir: Path, in_tmp: Path) -> None:
    """`cli.py score` on the test IDX file, through the real entry point, in a process that must not import
    Lightning, gives the scores and decisions `predict` wrote."""
    flags = ["--config", str(CONFIGS / "anomaly.yaml"), *tiny_for(CONFIGS / "anomaly.yaml", data_dir)]
    main(["fit", *flags])
    main(["predict", *flags, "--ckpt_path=last"])
    main(["export", *flags, "--ckpt_path=last", f"--output={in_tmp / 'exported'}"])
    predicted = list(csv.DictReader((run_folder(in_tmp, "anomaly", 1) / "predictions.csv").open()))
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
        assert float(row["score"]) == pytest.approx(float(prediction["anomaly_score"]), rel=1e-5)
        assert row["is_anomaly"] == prediction["is_anomaly"]


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
    assert namespace["codes"].shape == (8, 20)
    model = ExportedModel(in_tmp / "exported")
    pixels = namespace["pixels"]
    (expected,) = model.run("encoder", model.to_model_input(pixels))
    np.testing.assert_allclose(namespace["codes"], expected, rtol=1e-6)


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
    scored = {row["path"]: float(row["score"]) for row in csv.DictReader((in_tmp / "scores.csv").open())}
    assert scored.keys() == predicted.keys()
    for path, value in scored.items():
        assert value == pytest.approx(predicted[path], rel=1e-5), path
