"""Early checks of a `--ckpt_path`, so a bad path fails before anything is trained or written."""

import zipfile
from pathlib import Path

import torch

from ae_lightning.errors import CheckpointError

#: values of `ckpt_path` that Lightning resolves itself rather than reading as a file
LIGHTNING_CKPT_KEYWORDS = ("best", "last", "hpc", "registry")


def check_checkpoint(ckpt_path: str | Path) -> None:
    """Raises CheckpointError unless `ckpt_path` is a Lightning keyword or a readable Lightning checkpoint."""
    if str(ckpt_path) in LIGHTNING_CKPT_KEYWORDS or str(ckpt_path).startswith("registry:"):
        return
    path = Path(ckpt_path)
    if not path.is_file():
        raise CheckpointError(
            f"--ckpt_path {ckpt_path}: no such file"
            + (" (it is a folder)" if path.is_dir() else "")
            + ". A run's checkpoints are in runs/<name>/version_<n>/checkpoints/."
        )
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"--ckpt_path {ckpt_path} is not a readable checkpoint: it is not the zip archive "
            "torch.save writes (the file is truncated, corrupt, or not a checkpoint)"
        )
    try:
        # mmap reads only what unpickling touches, so even a large checkpoint costs little to check
        checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError... for broken files
        raise CheckpointError(
            f"--ckpt_path {ckpt_path} is not a readable checkpoint (corrupt, or not a PyTorch file): "
            f"{' '.join(str(err).split())}"
        ) from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(
            f"--ckpt_path {ckpt_path} is a PyTorch file but not a Lightning checkpoint "
            "(it has no 'state_dict' entry)"
        )
