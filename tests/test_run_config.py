"""SaveRunConfig: the resolved config in the run's own folder, never written over another run's."""

from pathlib import Path

import pytest

from ae_lightning.cli import main
from tests.conftest import CONFIGS
from tests.test_cli import tiny

AE = str(CONFIGS / "ae.yaml")


def test_a_run_folder_holding_a_config_is_refused_with_one_line(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fixed TensorBoard version names the same folder twice: the second run stops before training."""
    monkeypatch.chdir(tmp_path)
    args = ["fit", "--config", AE, *tiny(data_dir), "--trainer.logger.init_args.version=fixed"]
    main(args)
    config = tmp_path / "runs" / "ae" / "fixed" / "config.yaml"
    first = config.read_text()
    with pytest.raises(SystemExit) as error:
        main([*args, "--model.latent_dim=8"])
    assert str(error.value.code) == (
        f"error: {Path('runs/ae/fixed/config.yaml')} exists already: this run's folder holds another run's "
        "config. Start a new run (another version, or no fixed W&B id), or move that folder away"
    )
    assert config.read_text() == first
