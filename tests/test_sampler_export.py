"""`export --samplers`: a fitted sampler shipped with the decoder, as a graph from N(0, 1) noise to codes,
gives the sampler's own codes in ONNX and TorchScript, and composed with the decoder the sampler's images.
In the full suite only (a fit, five samplers fitted and two exports)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ae_lightning.cli import main
from ae_lightning.export.runtime import ExportedModel
from ae_lightning.models import RAE, VQVAE, VampVAE
from ae_lightning.samplers import SAMPLERS
from ae_lightning.samplers.run import exportable
from tests.conftest import CONFIGS, run_and_fail, run_folder, tiny
from tests.test_export import relative_difference

pytestmark = pytest.mark.slow

#: the samplers an RAE ships, with small fits
SHIPPED = {
    "normal": {},
    "gmm": {"num_components": 3},
    "two_stage": {"epochs": 2, "hidden_dim": 16},
    "maf": {"epochs": 2, "hidden_dims": [16]},
    "iaf": {"epochs": 1, "hidden_dims": [16]},
}


@pytest.fixture(scope="module")
def exported(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An RAE fitted for an epoch, its fitted samplers, and both exports with every sampler of SHIPPED."""
    folder = tmp_path_factory.mktemp("sampler_export")
    flags = ["--config", str(CONFIGS / "rae.yaml"), *tiny(data_dir)]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        main(["fit", *flags])
        for name, options in SHIPPED.items():
            main(["sample", *flags, "--ckpt_path=last", f"--sampler={name}", "--num_samples=4",
                  f"--output=drawn_{name}", f"--sampler_options={json.dumps(options)}"])  # fmt: skip
        for form in ("onnx", "torchscript"):
            main(["export", *flags, "--ckpt_path=last", f"--format={form}", f"--output={form}",
                  f"--samplers={json.dumps(list(SHIPPED))}"])  # fmt: skip
    return folder


@pytest.mark.parametrize("form", ["onnx", "torchscript"])
def test_each_exported_sampler_gives_the_samplers_codes_and_with_the_decoder_its_images(
    form: str, exported: Path
) -> None:
    last = run_folder(exported, "rae") / "checkpoints" / "last.ckpt"
    model = RAE.load_from_checkpoint(last).model.eval()
    digest = json.loads((exported / form / "model.json").read_text())["checkpoint"]["sha256"]
    shipped = ExportedModel(exported / form)
    for name in SHIPPED:
        sampler = exportable(name, model, last, digest)
        spec = shipped.spec["samplers"][name]
        assert spec["file"] == f"sampler_{name}.{'onnx' if form == 'onnx' else 'pt'}"
        assert spec["options"] == sampler.options()
        noise = torch.randn(5, spec["inputs"]["noise"][0], generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            codes = sampler.codes_from_noise(model, noise).float()
            images = model.decode(codes)
        (latent,) = shipped.run(f"sampler_{name}", noise.numpy())
        (decoded,) = shipped.run("decoder", latent)
        assert relative_difference(latent, codes) < 1e-5, name
        assert relative_difference(decoded, images) < 1e-5, name
        # the command's draws are this graph's: sample_codes is codes_from_noise of N(0, 1) draws
        drawn = np.load(exported / f"drawn_{name}" / "samples.npz")["codes"]
        assert drawn.shape == (4, model.latent_dim)
    mixture = shipped.spec["samplers"]["gmm"]["parameters"]
    assert len(mixture["weights"]) == 3 and np.isclose(sum(mixture["weights"]), 1.0)


@pytest.mark.parametrize(
    ("samplers", "message"),
    [
        ('["pixelcnn"]', "error: --samplers pixelcnn: pixelcnn draws codebook indices; RAE's codes"),
        ('["rhvae"]', "error: --samplers rhvae: "),
        ('["hypersphere"]', "error: --samplers hypersphere: the hypersphere sampler draws codes on the unit"),
    ],
)
def test_a_sampler_that_cannot_ship_is_one_line(
    samplers: str, message: str, exported: Path, data_dir: Path, capsys, monkeypatch
) -> None:
    monkeypatch.chdir(exported)
    args = ["export", "--config", str(CONFIGS / "rae.yaml"), *tiny(data_dir), "--ckpt_path=last",
            "--output=refused", f"--samplers={samplers}"]  # fmt: skip
    assert run_and_fail(args, capsys).startswith(message)
    assert not (exported / "refused").exists()


def test_an_unfitted_sampler_is_named_with_how_to_fit_it(exported: Path, tmp_path: Path) -> None:
    """A checkpoint with no fit beside it (a copy elsewhere): the command that fits it is in the message."""
    last = run_folder(exported, "rae") / "checkpoints" / "last.ckpt"
    copy = tmp_path / "copy.ckpt"
    copy.write_bytes(last.read_bytes())
    model = RAE.load_from_checkpoint(copy).model.eval()
    with pytest.raises(Exception, match=r"fit it first with `cli.py sample --sampler gmm --ckpt_path "):
        exportable("gmm", model, copy, "0" * 64)


def test_a_vampvae_ships_its_learnt_prior(data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """The vamp sampler's graph holds the pseudo-inputs and the encoder that maps them to the prior's
    components: the exported draws are the model's."""
    monkeypatch.chdir(tmp_path)
    flags = ["--config", str(CONFIGS / "vamp_vae.yaml"), *tiny(data_dir)]
    main(["fit", *flags])
    main(["export", *flags, "--ckpt_path=last", "--output=onnx", '--samplers=["vamp"]'])
    model = VampVAE.load_from_checkpoint(run_folder(tmp_path, "vamp_vae") / "checkpoints" / "last.ckpt").model
    noise = torch.randn(6, model.latent_dim + 1, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        codes = SAMPLERS["vamp"].for_model(model).codes_from_noise(model.eval(), noise)
    (latent,) = ExportedModel(tmp_path / "onnx").run("sampler_vamp", noise.numpy())
    assert relative_difference(latent, codes) < 1e-5


def test_a_vqvae_ships_its_fitted_pixelcnn(data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """The pixelcnn graph draws the indices position by position from Gumbel noise made of the N(0, 1)
    numbers, and gives the sampler's codes (codebook entries)."""
    monkeypatch.chdir(tmp_path)
    flags = ["--config", str(CONFIGS / "vqvae.yaml"), *tiny(data_dir)]
    main(["fit", *flags])
    options = {"epochs": 2, "num_layers": 2, "channels": 8, "embedding_dim": 8}
    main(["sample", *flags, "--ckpt_path=last", "--sampler=pixelcnn", "--num_samples=4", "--output=drawn",
          f"--sampler_options={json.dumps(options)}"])  # fmt: skip
    main(["export", *flags, "--ckpt_path=last", "--output=onnx", '--samplers=["pixelcnn"]'])
    last = run_folder(tmp_path, "vqvae") / "checkpoints" / "last.ckpt"
    model = VQVAE.load_from_checkpoint(last).model.eval()
    digest = json.loads((tmp_path / "onnx" / "model.json").read_text())["checkpoint"]["sha256"]
    sampler = exportable("pixelcnn", model, last, digest)
    noise = torch.randn(6, sampler.noise_size(), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        codes = sampler.codes_from_noise(model, noise)
    (latent,) = ExportedModel(tmp_path / "onnx").run("sampler_pixelcnn", noise.numpy())
    assert relative_difference(latent, codes) < 1e-5
