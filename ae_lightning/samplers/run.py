"""What `cli.py sample` does with a trained model: fit a sampler on the training codes (or reuse the one
fitted for this very checkpoint), draw, decode, and write a grid, the samples and, when asked, their FID."""

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import Tensor
from torchvision.utils import save_image
from tqdm import tqdm

from ae_lightning.autoencoders import Autoencoder
from ae_lightning.checkpoints import read_checkpoint
from ae_lightning.data.contract import AutoencoderDataModule
from ae_lightning.errors import CheckpointError, ConfigError
from ae_lightning.evaluation.generation import Generation
from ae_lightning.files import atomic_write, file_sha256, new_folder
from ae_lightning.samplers.base import Sampler
from ae_lightning.value_range import to_unit_interval

#: the samples decoded at once
BATCH = 500
#: the version of a saved fitted sampler's layout
FORMAT = 1


def fitted_path(ckpt_path: Path, sampler: str, digest: str) -> Path:
    """Where the sampler fitted for the checkpoint with this SHA-256 is kept: beside the checkpoint."""
    return ckpt_path.parent / f"sampler-{sampler}-{digest}.pt"


def exportable(name: str, model: Autoencoder, ckpt_path: Path, digest: str) -> Sampler:
    """The sampler `name` for `model`, as `export --samplers` writes it: a fitted one as fitted for this
    checkpoint by `sample` (the file beside it). One line (ConfigError) where that cannot be done."""
    from ae_lightning.samplers import SAMPLERS

    cls = SAMPLERS[name]
    reason = cls.refusal(model)
    if reason is not None:
        raise ConfigError(f"--samplers {name}: {reason}")
    options: dict[str, Any] = {}
    saved = None
    if cls.fitted:
        path = fitted_path(ckpt_path, name, digest)
        if not path.is_file():
            raise ConfigError(
                f"--samplers {name}: no {name} sampler fitted for this checkpoint ({path.name} beside it): "
                f"fit it first with `cli.py sample --sampler {name} --ckpt_path {ckpt_path}`"
            )
        saved = read_checkpoint(path, map_location="cpu", name=f"fitted sampler {path}")
        options = dict(saved.get("options") or {})
    sampler = cls.for_model(model, **options)
    if sampler.noise_size() is None:
        raise ConfigError(
            f"--samplers {name}: the {name} sampler draws by more than a function of noise (a chain, or "
            "code by code), and is not exported"
        )
    if saved is not None:
        sampler.load_state_dict(saved["state_dict"])
    return sampler.to(model.device).eval()


def training_codes(sampler: Sampler, model: Autoencoder, datamodule: AutoencoderDataModule) -> Tensor:
    """What the sampler is fitted on (`Sampler.encode`) for every training image, in order, with a bar."""
    datamodule.setup("fit")
    size = datamodule.split_size("train")
    codes = []
    with torch.no_grad(), tqdm(total=size, desc="codes of the training images", unit="img") as bar:
        for batch in datamodule.ordered_batches("train", BATCH, model.device):
            encoded = sampler.encode(model, batch.inputs.to(model.dtype))
            codes.append(encoded.float() if encoded.is_floating_point() else encoded)  # indices stay integers
            bar.update(len(batch))
    return torch.cat(codes)


def fit_or_reuse(
    sampler: Sampler, model: Autoencoder, datamodule: AutoencoderDataModule, ckpt_path: Path, digest: str
) -> Path | None:
    """Fits a sampler that needs it on the training codes, or loads the one fitted before for this checkpoint
    with the same options; saves a new fit beside the checkpoint. Returns the file (None: nothing to fit)."""
    if not sampler.fitted:
        return None
    path = fitted_path(ckpt_path, sampler.name, digest)
    if path.is_file():
        saved = read_checkpoint(path, map_location=model.device, name=f"fitted sampler {path}")
        if saved.get("checkpoint_sha256") == digest and saved.get("options") == sampler.options():
            sampler.load_state_dict(saved["state_dict"])
            rank_zero_info(f"Reusing the {sampler.name} sampler fitted for this checkpoint: {path}")
            return path
        rank_zero_info(f"{path} was fitted with other options: fitting again")
    codes = training_codes(sampler, model, datamodule)
    with tqdm(desc=f"fitting {sampler.name}", unit="step") as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        sampler.fit(codes, progress)
    state = {
        "sampler": sampler.name,
        "options": sampler.options(),
        "checkpoint_sha256": digest,
        "format": FORMAT,
        "state_dict": {name: tensor.cpu() for name, tensor in sampler.state_dict().items()},
    }
    with atomic_write(path) as file:
        torch.save(state, file)
    rank_zero_info(f"Saved the fitted {sampler.name} sampler beside the checkpoint: {path}")
    return path


def draw(sampler: Sampler, model: Autoencoder, num_samples: int, seed: int) -> tuple[Tensor, Tensor]:
    """`num_samples` codes and their images (on the CPU, float32), repeatable by `seed`."""
    generator = torch.Generator().manual_seed(seed)
    codes, images = [], []
    with torch.no_grad():
        for start in range(0, num_samples, BATCH):
            count = min(BATCH, num_samples - start)
            batch_codes = sampler.sample_codes(model, count, generator)
            codes.append(batch_codes.float().cpu())
            images.append(model.decode(batch_codes.to(model.dtype)).float().cpu())
    return torch.cat(codes), torch.cat(images)


def frechet(model: Autoencoder, datamodule: AutoencoderDataModule, images: Tensor) -> dict[str, float]:
    """FID, precision and recall of the samples against the test split (`evaluation.Generation`)."""
    network = datamodule.feature_network()
    if network is None:
        raise ConfigError(
            "--fid true: the framework has no feature classifier for this data (the MNIST family has one)"
        )
    metric = Generation(model.value_range)
    metric.prepare(network, model.device)
    datamodule.setup("test")
    taken = 0
    for batch in datamodule.ordered_batches("test", BATCH, model.device):
        count = min(len(batch), images.shape[0] - taken)
        if count <= 0:
            break
        metric.update(
            {"inputs": batch.inputs[:count], "samples": images[taken : taken + count].to(model.device)}
        )
        taken += count
    return {name: float(value) for name, value in metric.compute().items()} | {"fid_images": taken}


def write_outputs(
    output: Path,
    overwrite: bool,
    images: Tensor,
    codes: Tensor,
    value_range: tuple[float, float],
    report: dict,
) -> None:
    """`grid.png` (the first 64 samples), `samples.npz` (`images` in the data's range, `codes`) and
    `sample.json` into the folder `output`, written beside it and renamed: all or nothing."""
    with new_folder(output, overwrite) as temp:
        grid = to_unit_interval(images[:64], value_range)
        save_image(grid, temp / "grid.png", nrow=8, pad_value=1.0, format="png")
        np.savez(temp / "samples.npz", images=images.numpy(), codes=codes.numpy())
        (temp / "sample.json").write_text(json.dumps(report, indent=2) + "\n")


def sample_checkpoint(
    model: Autoencoder,
    datamodule: AutoencoderDataModule | None,
    ckpt_path: Path,
    sampler_class: type[Sampler],
    options: dict[str, Any],
    num_samples: int,
    output: Path,
    fid: bool,
    seed: int,
    overwrite: bool,
) -> Path:
    """The `sample` command on a model whose weights are loaded (in eval mode, on its device)."""
    if num_samples < 1:
        raise ConfigError(f"--num_samples must be at least 1, got {num_samples}")
    reason = sampler_class.refusal(model)
    if reason is not None:
        raise ConfigError(f"--sampler {sampler_class.name}: {reason}")
    if output.exists() and not overwrite:  # before any fitting
        raise ConfigError(f"--output {output} exists: give another folder, or --overwrite true to replace it")
    try:
        sampler = sampler_class.for_model(model, **options).to(model.device)
    except TypeError as err:
        raise ConfigError(f"--sampler_options for {sampler_class.name}: {err}") from None
    needs_data = sampler.fitted or fid
    if needs_data and not isinstance(datamodule, AutoencoderDataModule):
        raise ConfigError(f"--sampler {sampler_class.name} needs the config's data (--data) to fit on")
    digest = file_sha256(ckpt_path)
    fitted = fit_or_reuse(sampler, model, datamodule, ckpt_path, digest) if sampler.fitted else None
    codes, images = draw(sampler, model, num_samples, seed)
    if not torch.isfinite(images).all():
        raise CheckpointError(f"the {sampler.name} sampler's codes decoded to NaN or infinite images")
    report: dict[str, Any] = {
        "sampler": sampler.name,
        "options": sampler.options(),
        "num_samples": num_samples,
        "seed": seed,
        "checkpoint": {"path": str(ckpt_path), "sha256": digest},
        "fitted_sampler": str(fitted) if fitted else None,
    }
    if fid:
        report["generation"] = frechet(model, datamodule, images)
    write_outputs(output, overwrite, images, codes, model.value_range, report)
    return output
