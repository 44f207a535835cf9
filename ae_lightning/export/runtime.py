"""Running an exported model without Lightning: its graphs by onnxruntime or TorchScript, on images read
from a folder, an IDX file or a NPY file. `python cli.py score` (`ae_lightning.export.score`) uses it."""

import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ae_lightning.errors import ConfigError, DataError

#: files that are read as arrays of images; anything else that is a file is taken for IDX
NPY_SUFFIX = ".npy"


class ExportedModel:
    """The folder `cli.py export` wrote: `model.json` and the encoder, decoder and scorer graphs.

    `run(part, *arrays)` runs one graph on numpy inputs (what `model_input` makes of uint8 pixels, or float
    vectors; int64 labels for a conditional model) and gives its outputs as numpy arrays, in the order of
    model.json's `graphs` (the scorer: anomaly_score, pred_anomaly and, where `gives_map`, anomaly_map).
    Folders written before model.json version 2, whose graphs take floats in the value range, are run as
    they were.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        spec_path = self.folder / "model.json"
        try:
            self.spec: dict[str, Any] = json.loads(spec_path.read_text())
            self.format: str = self.spec["format"]
            self.files: dict[str, str] = self.spec["files"]
        except (OSError, ValueError, KeyError) as err:
            raise ConfigError(
                f"{spec_path} is missing or not an export's model.json ({' '.join(str(err).split())}): "
                "give the folder `cli.py export` wrote"
            ) from None
        self._graphs: dict[str, Any] = {}

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.spec["input"]["shape"])

    @property
    def gives_map(self) -> bool:
        """Whether the scorer gives each image's anomaly map (B, H, W) as its third output."""
        return "anomaly_map" in self.spec.get("graphs", {}).get("scorer", {}).get("outputs", [])

    @property
    def map_scale(self) -> tuple[float, float] | None:
        """(low, high) of the normal validation images' maps, the heat maps' colour scale; None: unknown."""
        calibration = self.spec.get("map_calibration")
        return None if calibration is None else (calibration["low"], calibration["high"])

    def model_input(self, pixels: np.ndarray) -> np.ndarray:
        """What the encoder and scorer take, from uint8 pixels (B, *input_shape): the pixels themselves (the
        graphs scale them); for an export of version 1, floats in the value range, scaled here."""
        if self.spec.get("version", 1) >= 2:
            return pixels
        low, high = self.spec["input"]["value_range"]
        return (pixels.astype(np.float32) / 255 * (high - low) + low).astype(np.float32)

    def run(self, part: str, *inputs: np.ndarray) -> list[np.ndarray]:
        """The outputs of graph `part` on `inputs`, as numpy arrays in the order model.json names them."""
        graph = self._graph(part)
        if self.format == "onnx":
            names = [item.name for item in graph.get_inputs()]
            return graph.run(None, dict(zip(names, inputs, strict=True)))
        import torch

        with torch.no_grad():
            outputs = graph(*[torch.from_numpy(array) for array in inputs])
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        return [output.numpy() for output in outputs]

    def _graph(self, part: str) -> Any:
        if part not in self._graphs:
            path = self.folder / self.files[part]
            if self.format == "onnx":
                from ae_lightning.export.writer import require_onnx

                require_onnx()
                import onnxruntime

                self._graphs[part] = onnxruntime.InferenceSession(
                    str(path), providers=["CPUExecutionProvider"]
                )
            else:
                import torch

                with warnings.catch_warnings():  # torch 2.14 deprecates TorchScript; it still loads
                    warnings.simplefilter("ignore", FutureWarning)
                    self._graphs[part] = torch.jit.load(str(path), map_location="cpu")
        return self._graphs[part]


def read_inputs(
    source: Path, model: ExportedModel, batch_size: int
) -> Iterator[tuple[list[str], np.ndarray]]:
    """Batches of (names, uint8 pixels (B, *input_shape)) from a folder of images (names: the paths), a NPY
    file or an IDX file (names: the indices). Images of the wrong size or channel count are one error each;
    a model trained on a folder fits them as its datamodule did (model.json's `data.resize`)."""
    shape = model.input_shape
    if source.is_dir():
        yield from _read_folder(source, model, batch_size)
        return
    if not source.is_file():
        raise DataError(f"--input {source}: no such file or folder")
    pixels = _read_array(source)
    if pixels.ndim == len(shape) and len(shape) == 3 and shape[0] == 1:
        pixels = pixels[:, None]  # (N, H, W) gray images
    if pixels.shape[1:] != shape:
        raise DataError(
            f"{source} holds items of shape {list(pixels.shape[1:])}, the model takes {list(shape)} "
            "(channels, height, width): give images of that shape"
        )
    for start in range(0, len(pixels), batch_size):
        stop = min(start + batch_size, len(pixels))
        yield [str(i) for i in range(start, stop)], pixels[start:stop]


def _read_array(source: Path) -> np.ndarray:
    """uint8 pixels from a NPY file (no pickles) or an IDX file of unsigned bytes."""
    from ae_lightning.data.idx import check_idx_file

    if source.suffix == NPY_SUFFIX:
        try:
            pixels = np.load(source, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise DataError(f"{source} is not a NPY file of pixels ({' '.join(str(err).split())})") from None
        if pixels.dtype != np.uint8:
            raise DataError(
                f"{source} holds {pixels.dtype} values: give uint8 pixels (0..255), as images hold"
            )
        return pixels
    with source.open("rb") as file:
        header = file.read(4)  # the fourth byte of an IDX header is its number of dimensions
    ndim = header[3] if len(header) == 4 else 3
    dims = check_idx_file(source, ndim=ndim)
    return np.fromfile(source, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _read_folder(
    source: Path, model: ExportedModel, batch_size: int
) -> Iterator[tuple[list[str], np.ndarray]]:
    from ae_lightning.data.image_files import fit_to_size, image_files, read_image

    shape = model.input_shape
    if len(shape) != 3:
        raise DataError(f"the model takes vectors of {shape[0]} numbers, not images: give a NPY file")
    files = image_files(source)
    if not files:
        raise DataError(f"no image files in {source} or its subfolders")
    resize = model.spec.get("data", {}).get("resize")
    names, batch = [], []
    for path in files:
        try:
            image = read_image(path, shape[0])  # converted to the channels the model takes
        except (OSError, RuntimeError, ValueError) as err:
            raise DataError(
                f"{path} cannot be decoded as an image ({' '.join(str(err).split())[:200]})"
            ) from None
        if resize:
            image = fit_to_size(image, shape[1:], resize)
        elif tuple(image.shape) != shape:
            raise DataError(
                f"{path} is {image.shape[1]}x{image.shape[2]}, the model takes {shape[1]}x{shape[2]} images: "
                "resize them first (the model was not trained on a folder, so nothing says how)"
            )
        names.append(str(path))
        batch.append(image.numpy())
        if len(batch) == batch_size:
            yield names, np.stack(batch)
            names, batch = [], []
    if batch:
        yield names, np.stack(batch)
