"""Writing an export: the three graphs in ONNX or TorchScript and `model.json`, into a folder made whole or
not at all."""

import copy
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from ae_lightning.autoencoders import Autoencoder, Conditional, LatentModel
from ae_lightning.errors import ConfigError
from ae_lightning.export.graphs import Graph, SamplerGraph, gives_map, graph_names, graphs
from ae_lightning.files import new_folder

if TYPE_CHECKING:
    from ae_lightning.evaluation.maps import MapCalibration

Format = Literal["onnx", "torchscript"]
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}
#: the version of model.json's layout: 2 = the image graphs take uint8 pixels and scale them themselves, and
#: the inputs and outputs are named `inputs`, `latent`, `reconstruction`, `anomaly_score`, `pred_anomaly`
#: (1: float inputs in the value range, named `images`, `code`, `score`, `is_anomaly`); 3 = the scorer of a
#: model that localises gives `anomaly_map` too, described under `map` and `map_calibration`
MODEL_JSON_VERSION = 3


def require_onnx() -> None:
    """Fails with one line when the optional ONNX packages are missing."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise ConfigError(
            f"ONNX export and scoring need the `export` extra ({err.name} is missing): "
            'pip install -e ".[export]" (onnx, onnxruntime, onnxscript)'
        ) from None


def describe(
    model: LatentModel,
    threshold: float | None,
    files: dict[str, str],
    binarized: bool = False,
    map_calibration: "MapCalibration | None" = None,
) -> dict[str, Any]:
    """What a consumer needs to run the graphs, for model.json (the caller adds the data and checkpoint);
    `map_calibration`: the scale of the anomaly maps, set on the normal validation images (None: none)."""
    low, high = model.value_range
    pixels = len(model.image_shape) == 3
    linear = f"* {high - low:g} {'-' if low < 0 else '+'} {abs(low):g}"
    scaling = f"x = pixel / 255 {linear}"
    if binarized:  # trained on binarised images
        scaling = f"b = 1 if pixel > 127 else 0, x = b {linear}"
    labels = ["labels"] if isinstance(model, Conditional) else []
    maps = gives_map(model)
    scorer = "anomaly_score (B,): higher is more anomalous; pred_anomaly (B,): anomaly_score > threshold" + (
        "" if threshold is not None else " (no threshold in the checkpoint: always false)"
    )
    if maps:
        scorer += (
            "; anomaly_map (B, H, W) float32: higher is more anomalous there, on the scale of "
            "map_calibration (low to high: the range of the normal validation images' maps)"
        )
    return {
        "version": MODEL_JSON_VERSION,
        "variant": type(model).__name__,
        "files": files,
        "input": {
            "name": "inputs",
            "shape": list(model.image_shape),
            "channels": model.image_shape[0] if pixels else None,
            "dtype": "uint8" if pixels else "float32",
            "value_range": [low, high],
            "scaling": f"inside the graph: {scaling}" if pixels else "none: floats in value_range",
            "binarized": binarized,
            "layout": "NCHW" if pixels else "ND",
        },
        "latent_dim": model.latent_dim,
        "conditional": isinstance(model, Conditional),
        "num_classes": model.num_classes if isinstance(model, Conditional) else None,
        "threshold": threshold,
        "map": map_description(model) if maps else None,
        "map_calibration": map_calibration.as_dict() if maps and map_calibration is not None else None,
        "graphs": {
            name: {"inputs": [*inputs, *labels], "outputs": outputs}
            for name, (inputs, outputs) in graph_names(model).items()
            if name in files
        },
        "outputs": {
            name: meaning
            for name, meaning in {
                "encoder": "latent (B, latent_dim): for a VAE the posterior mean",
                "decoder": "reconstruction (B, *shape) in value_range: the output mean",
                "scorer": scorer,
            }.items()
            if name in files  # a model without a decoder exports none
        },
    }


def map_description(model: LatentModel) -> dict[str, Any]:
    """What each pixel of the scorer's anomaly map measures (`autoencoders.scoring.ScoreShape`)."""
    if not isinstance(model, Autoencoder):
        return {"measure": None, "smoothing": None}
    return {"measure": model.score_shape.measure, "smoothing": model.score_shape.smoothing}


def export_model(
    model: LatentModel,
    format: Format,
    output: str | Path,
    threshold: float | None = None,
    extra: dict[str, Any] | None = None,
    overwrite: bool = False,
    binarized: bool = False,
    samplers: dict[str, nn.Module] | None = None,
    map_calibration: "MapCalibration | None" = None,
) -> Path:
    """Writes `encoder`, `decoder` (a model that reconstructs) and `scorer` of `model` (a float32 CPU copy, in
    eval mode) in `format`, each with a dynamic batch dimension, and `model.json` (`describe` plus `extra`)
    into the folder `output`; each of `samplers` (`ae_lightning.samplers`, by name) as `sampler_<name>`,
    noise -> latent, described in `model.json` under `samplers`; `map_calibration` (the checkpoint's, None:
    none) is the scale of the scorer's anomaly maps, for `model.json`.
    `binarized`: the model was trained on binarised images (the graphs threshold the pixels). An existing
    `output` is refused unless `overwrite`; the folder is written beside it and renamed."""
    if format not in SUFFIXES:
        raise ConfigError(f"--format must be one of {list(SUFFIXES)}, got {format!r}")
    if format == "onnx":
        require_onnx()
    output = Path(output)
    model = copy.deepcopy(model).cpu().float().eval()
    with new_folder(output, overwrite) as temp:
        files = {}
        for name, graph in graphs(model, threshold, binarized=binarized).items():
            files[name] = f"{name}{SUFFIXES[format]}"
            (to_onnx if format == "onnx" else to_torchscript)(graph, temp / files[name])
        described = {}
        for name, sampler in (samplers or {}).items():
            sampler = copy.deepcopy(sampler).cpu().eval()
            files[f"sampler_{name}"] = f"sampler_{name}{SUFFIXES[format]}"
            noise = torch.zeros(2, sampler.noise_size())
            graph = Graph(SamplerGraph(sampler, model), (noise,), ["noise"], ["latent"])
            (to_onnx if format == "onnx" else to_torchscript)(graph, temp / files[f"sampler_{name}"])
            described[name] = {
                "file": files[f"sampler_{name}"],
                "inputs": {"noise": [sampler.noise_size()], "distribution": "independent N(0, 1) numbers"},
                "outputs": {"latent": [model.latent_dim]},
                "how": f"latent = sampler_{name}(noise); images = decoder(latent), in value_range",
                "options": sampler.options(),
                "parameters": sampler.exported_parameters(),
            }
        described_model = describe(model, threshold, files, binarized, map_calibration)
        description = {**described_model, "format": format, **(extra or {})}
        if described:
            description["samplers"] = described
        (temp / "model.json").write_text(json.dumps(description, indent=2) + "\n")
    return output


def to_onnx(graph: Graph, path: Path) -> None:
    """Exports with torch.export (dynamic batch) and checks the file with onnx.checker."""
    import onnx

    batch = torch.export.Dim("batch")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on its own internals
        torch.onnx.export(
            graph.module,
            graph.inputs,
            str(path),
            dynamo=True,
            input_names=graph.input_names,
            output_names=graph.output_names,
            dynamic_shapes=tuple({0: batch} for _ in graph.inputs),
            external_data=False,
            verbose=False,
        )
    onnx.checker.check_model(str(path), full_check=True)
    # the exporter falls back to other strategies when one fails: refuse a graph whose batch is fixed
    graph = onnx.load(str(path), load_external_data=False).graph
    fixed = [
        item.name
        for item in [*graph.input, *graph.output]
        if not item.type.tensor_type.shape.dim[0].dim_param
    ]
    if fixed:
        raise RuntimeError(f"the exported {path.stem} has a fixed batch size for {fixed}: an export bug")


def to_torchscript(graph: Graph, path: Path) -> None:
    """Traces the graph and freezes it: the weights become constants and what the graph does not use (a
    codebook's running statistics, other networks) is left out of the file."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings on checks that are constant for a graph, and the
        # deprecation of TorchScript
        traced = torch.jit.trace(graph.module, graph.inputs, check_trace=False)
        frozen = torch.jit.freeze(traced.eval())
        torch.jit.save(frozen, str(path))  # torch 2.14 deprecates TorchScript for torch.export: still read
