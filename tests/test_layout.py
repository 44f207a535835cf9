"""The shape of the package: torch models free of Lightning, callbacks free of the LightningModules, private
Lightning attributes touched in one module only."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO
from tests.test_autoencoders import fixed_batch, tensor_inputs
from tests.variants import CASES, IDS

PACKAGE = REPO / "ae_lightning"


def test_the_torch_models_import_no_lightning() -> None:
    code = (
        "import sys, ae_lightning.autoencoders, ae_lightning.batch\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning'))\n"
        "print(loaded)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert done.stdout.strip() == "[]"


def imports_of(path: Path) -> list[str]:
    return re.findall(r"^\s*(?:from|import) (ae_lightning[\w.]*)", path.read_text(), re.MULTILINE)


def test_callbacks_import_nothing_from_the_lightning_modules() -> None:
    """Callbacks work through the torch models' declared interface (`ae_lightning.autoencoders`)."""
    for path in sorted((PACKAGE / "callbacks").glob("*.py")):
        assert not [name for name in imports_of(path) if name.startswith("ae_lightning.models")], path


def test_private_lightning_state_is_touched_by_the_k_steps_module_only() -> None:
    private = re.compile(r"\.(fit_loop|epoch_loop|_batches_that_stepped|_logger_connector|_fs)\b")
    touching = [
        path.relative_to(REPO).as_posix()
        for path in sorted(PACKAGE.rglob("*.py"))
        if private.search(path.read_text())
    ]
    assert touching == ["ae_lightning/multistep.py"]


def test_no_file_is_over_300_lines() -> None:
    long = {path.name: n for path in PACKAGE.rglob("*.py") if (n := len(path.read_text().splitlines())) > 300}
    assert not long


@pytest.mark.parametrize("cls, extra", CASES, ids=IDS)
def test_checkpoints_of_the_earlier_layout_load(cls, extra, tmp_path: Path) -> None:
    """Before the torch models, the module held the networks itself: its checkpoints have `encoder.*` where
    they now have `model.encoder.*`, and no format entry. They load, to the same outputs."""
    from lightning.pytorch import Trainer

    torch.manual_seed(0)
    module = cls(**{"latent_dim": 8, "hidden_dims": [32], **extra})
    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu")
    trainer.strategy.connect(module)
    new = tmp_path / "new.ckpt"
    trainer.save_checkpoint(new)
    checkpoint = torch.load(new, weights_only=True)
    del checkpoint["ae_lightning_format"]
    weights = checkpoint["state_dict"]
    checkpoint["state_dict"] = {name.removeprefix("model."): tensor for name, tensor in weights.items()}
    old = tmp_path / "old.ckpt"
    torch.save(checkpoint, old)
    loaded = cls.load_from_checkpoint(old).eval()
    batch = fixed_batch(count=4)
    given = tensor_inputs(module.model, batch)
    torch.testing.assert_close(loaded(batch.inputs, *given), module.eval()(batch.inputs, *given))
