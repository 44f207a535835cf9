"""Deep SVDD: the centre, the distance score, the soft-boundary loss and radius against hand numbers, the
bias-free networks, the refusals, and training in a plain loop, with a Trainer and through the CLI."""

from pathlib import Path

import pytest
import torch
from torch import nn

from ae_lightning.autoencoders import AE, ConditionalVAE, DeepSVDD, Reconstructs
from ae_lightning.autoencoders.deep_svdd import initial_centre, radius_quantile
from ae_lightning.batch import Batch
from ae_lightning.errors import CheckpointError, ConfigError
from tests.test_autoencoders import fixed_batch


class Codes(nn.Module):
    """An encoder whose codes are its inputs (vectors), remembering whether it ran in training mode."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(()))  # the model's device and dtype are read off a parameter
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        return x * self.weight


def on_codes(dim: int, **kwargs) -> DeepSVDD:
    """A DeepSVDD on vectors of `dim` numbers whose code of a vector is the vector itself."""
    model = DeepSVDD(latent_dim=dim, hidden_dims=[4], image_shape=(dim,), value_range=(-1, 1), **kwargs)
    model.encoder = Codes()
    return model


def test_the_centre_is_the_mean_code_in_eval_mode_with_entries_near_zero_moved_to_eps() -> None:
    """Codes of two batches: means 2, -0.05, -0.2, 0; eps 0.1 moves the second to -0.1 and the zero to +0.1.
    The pass runs in eval mode and leaves the model training; summing over two processes that each saw the
    same data gives the same mean."""
    model = on_codes(4).train()
    batches = [
        Batch(torch.tensor([[1.0, 0.05, -0.5, 0.0], [3.0, -0.25, -0.5, 0.0]])),
        Batch(torch.tensor([[2.0, 0.05, 0.4, 0.0]])),
    ]
    expected = torch.tensor([2.0, -0.1, -0.2, 0.1])
    torch.testing.assert_close(initial_centre(model, batches), expected)
    assert model.encoder.modes == [False, False] and model.training
    torch.testing.assert_close(initial_centre(model, batches, lambda tensor: 2 * tensor), expected)
    model.centre_eps = 0.0  # the plain mean
    torch.testing.assert_close(initial_centre(model, batches), torch.tensor([2.0, -0.05, -0.2, 0.0]))


#: codes whose squared distances to c = (1, 0) are 0, 1, 9 and 25 (distances 0, 1, 3, 5)
CODES = torch.tensor([[1.0, 0.0], [2.0, 0.0], [1.0, 3.0], [4.0, 4.0]])


def test_the_score_is_the_squared_distance_and_soft_boundary_subtracts_r_squared() -> None:
    one_class = on_codes(2).eval()
    one_class.set_centre(torch.tensor([1.0, 0.0]))
    terms = one_class.loss_terms(Batch(CODES))
    torch.testing.assert_close(one_class.anomaly_score(Batch(CODES)), torch.tensor([0.0, 1.0, 9.0, 25.0]))
    torch.testing.assert_close(terms["loss"], torch.tensor([0.0, 1.0, 9.0, 25.0]))

    soft = on_codes(2, objective="soft-boundary", nu=0.5).eval()
    soft.set_centre(torch.tensor([1.0, 0.0]))
    soft.radius.fill_(1.5)  # R^2 = 2.25
    terms = soft.loss_terms(Batch(CODES))
    # R^2 + (1 / nu) max(0, d^2 - R^2): 2.25 + 2 * (0, 0, 6.75, 22.75)
    torch.testing.assert_close(terms["loss"], torch.tensor([2.25, 2.25, 15.75, 47.75]))
    torch.testing.assert_close(terms["outside"], torch.tensor([0.0, 0.0, 1.0, 1.0]))
    # the batch mean is the paper's objective: R^2 + 1 / (nu n) sum max(0, d^2 - R^2) = 2.25 + 2 * 29.5 / 4
    assert terms["loss"].mean().item() == pytest.approx(17.0)
    torch.testing.assert_close(soft.anomaly_score(Batch(CODES)), torch.tensor([-2.25, -1.25, 6.75, 22.75]))
    assert soft.radius.item() == 1.5  # evaluation leaves R alone


@pytest.mark.parametrize("nu, radius", [(0.5, 2.0), (0.25, 3.5)])
def test_training_sets_the_radius_to_the_quantile_of_the_distances_after_warm_up(nu, radius) -> None:
    """Distances 0, 1, 3, 5: the 0.5 quantile (linear) is (1 + 3) / 2 = 2, the 0.75 one 3 + 0.25 * 2 = 3.5.
    The step's loss used the R before it; no update during the warm-up's steps."""
    model = on_codes(2, objective="soft-boundary", nu=nu, warmup_steps=3).train()
    model.set_centre(torch.tensor([1.0, 0.0]))
    model.step = 2  # still warming up
    model.loss_terms(Batch(CODES))
    assert model.radius.item() == 0.0
    model.step = 3
    terms = model.loss_terms(Batch(CODES))
    assert model.radius.item() == pytest.approx(radius)
    torch.testing.assert_close(terms["loss"], CODES.sub(torch.tensor([1.0, 0.0])).square().sum(1) / nu)


def test_the_radius_is_numpys_quantile_of_the_distances_and_no_step_waits_for_the_device(monkeypatch) -> None:
    """As the authors' `get_radius` (np.quantile of the distances) on 7 and 200 draws; a soft-boundary step
    (loss, radius, backward) and a score read nothing back from the device (tests/syncs.py)."""
    import numpy as np

    from tests.syncs import count_host_syncs

    squared = torch.rand(200, generator=torch.Generator().manual_seed(0)) * 10
    for count, nu in ((7, 0.1), (7, 0.5), (200, 0.05), (200, 1.0)):
        expected = np.quantile(np.sqrt(squared[:count].numpy()), 1 - nu)
        assert radius_quantile(squared[:count], nu).item() == pytest.approx(expected, rel=1e-6)
    model = DeepSVDD(latent_dim=4, hidden_dims=[16], objective="soft-boundary", pretrain_steps=2).train()
    model.set_centre(torch.full((4,), 0.1))
    model.step = 5
    batch = fixed_batch(count=8)
    with count_host_syncs(monkeypatch) as syncs:
        syncs.active = True
        model.loss_terms(batch)["loss"].mean().backward()
        model.eval().anomaly_score(batch)
    assert syncs.found == [] and model.radius.item() > 0


@pytest.mark.parametrize("backbone, hidden_dims", [("mlp", [16, 8]), ("conv", [4, 8])])
def test_bias_free_networks_have_no_bias_and_the_default_keeps_it(backbone, hidden_dims) -> None:
    layers = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)
    svdd = DeepSVDD(latent_dim=4, backbone=backbone, hidden_dims=hidden_dims, pretrain_steps=5)
    bias_free = AE(latent_dim=4, backbone=backbone, hidden_dims=hidden_dims, bias=False)
    for model in (svdd, bias_free):
        found = [module for module in model.modules() if isinstance(module, layers)]
        assert len(found) >= 6 and all(module.bias is None for module in found)
        assert not [name for name, _ in model.named_parameters() if "bias" in name]
    with_bias = AE(latent_dim=4, backbone=backbone, hidden_dims=hidden_dims)
    assert all(module.bias is not None for module in with_bias.modules() if isinstance(module, layers))
    assert not isinstance(svdd, Reconstructs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"nu": 0.0}, r"nu must be a fraction of outliers in \(0, 1\], got 0.0"),
        ({"nu": 1.5}, r"nu must be a fraction of outliers in \(0, 1\], got 1.5"),
        ({"objective": "two-class"}, "objective must be 'one-class' or 'soft-boundary', got 'two-class'"),
        ({"bias": True}, r"needs bias-free networks \(bias false\).*hypersphere collapse"),
        ({"warmup_steps": -1}, "warmup_steps and pretrain_steps must be >= 0"),
        ({"centre_eps": -0.1}, "centre_eps must be >= 0"),
    ],
)
def test_bad_arguments_fail_in_one_line(kwargs, message) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        DeepSVDD(**kwargs)
    assert "\n" not in str(error.value)


def test_no_loss_or_score_before_the_centre_and_pretraining_reconstructs_until_then() -> None:
    batch = fixed_batch(count=4)
    with pytest.raises(ConfigError, match="centre c is not set yet") as error:
        DeepSVDD(latent_dim=4, hidden_dims=[16]).anomaly_score(batch)
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="centre c is not set yet"):
        DeepSVDD(latent_dim=4, hidden_dims=[16]).loss_terms(batch)
    model = DeepSVDD(latent_dim=4, hidden_dims=[16], pretrain_steps=3)
    model.step = 2
    assert set(model.loss_terms(batch)) == {"loss", "recon"}
    model.step = 3  # pretraining is over, but nobody set the centre
    with pytest.raises(ConfigError, match="centre c is not set yet"):
        model.loss_terms(batch)
    with pytest.raises(ConfigError, match="cannot drop the bias terms of its networks"):
        ConditionalVAE(latent_dim=4, hidden_dims=[16], bias=False)


def test_a_plain_loop_pulls_the_codes_to_the_centre() -> None:
    """60 Adam steps on one batch: the mean squared distance to c falls at least 20-fold; c stays put."""
    torch.manual_seed(0)
    model = DeepSVDD(latent_dim=8, hidden_dims=[64])
    batch = fixed_batch()
    model.set_centre(initial_centre(model, [batch]))
    centre = model.centre.clone()
    first = model.anomaly_score(batch).mean().item()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(60):
        model.step = step
        optimizer.zero_grad()
        model.loss_terms(batch)["loss"].mean().backward()
        optimizer.step()
    assert model.anomaly_score(batch).mean().item() < first / 20
    assert torch.equal(model.centre, centre)


def trainer(root: Path, **kwargs):
    """A quiet CPU Trainer under `root`: no logger, no checkpoints of its own, one validation batch."""
    from lightning.pytorch import Trainer

    settings = dict(default_root_dir=root, logger=False, accelerator="cpu", enable_progress_bar=False,
                    enable_model_summary=False, enable_checkpointing=False, limit_val_batches=1,
                    num_sanity_val_steps=0)  # fmt: skip
    return Trainer(**settings | kwargs)


def test_fit_sets_the_centre_from_the_training_data_and_checkpoints_keep_it(data_dir, tmp_path) -> None:
    """c is the mean initial code of all 72 training images (set before the first step); the checkpoint
    reloads to identical scores, c and R; a resumed run keeps them rather than computing c again."""
    from ae_lightning.data import MNISTDataModule
    from ae_lightning.models import DeepSVDD as Module
    from tests.conftest import VAL_SIZE

    datamodule = MNISTDataModule(data_dir=str(data_dir), val_size=VAL_SIZE, batch_size=16)
    torch.manual_seed(0)
    module = Module(latent_dim=4, hidden_dims=[16], objective="soft-boundary", nu=0.2, warmup_steps=1)
    untrained = DeepSVDD(latent_dim=4, hidden_dims=[16], objective="soft-boundary")
    untrained.load_state_dict(module.model.state_dict())
    trainer(tmp_path, max_steps=4).fit(module, datamodule)
    training = datamodule.ordered_batches("train", 32, torch.device("cpu"))
    torch.testing.assert_close(module.model.centre, initial_centre(untrained, training))
    assert datamodule.split_size("train") == 72 and module.model.radius.item() > 0

    ckpt = tmp_path / "fitted.ckpt"
    module.trainer.save_checkpoint(ckpt)
    reloaded = Module.load_from_checkpoint(ckpt).eval()
    batch = fixed_batch(count=6)
    assert reloaded.model.has_centre and torch.equal(reloaded.model.radius, module.model.radius)
    torch.testing.assert_close(reloaded.model.anomaly_score(batch), module.model.eval().anomaly_score(batch))

    resumed = Module(latent_dim=4, hidden_dims=[16], objective="soft-boundary", nu=0.2, warmup_steps=1)
    trainer(tmp_path, max_steps=6).fit(resumed, datamodule, ckpt_path=ckpt)
    assert torch.equal(resumed.model.centre, module.model.centre)  # trained weights would give another c
    assert not torch.equal(resumed.model.radius, module.model.radius)  # two more steps set R


def test_in_run_pretraining_sets_the_centre_once_its_steps_are_done(data_dir, tmp_path) -> None:
    """pretrain_steps 3: validation at step 2 logs the reconstruction loss and no distances; at step 3 c
    becomes the mean code of the training data under the weights pretraining left; validation at step 4
    logs the distances."""
    from lightning.pytorch import Callback

    from ae_lightning.data import MNISTDataModule
    from ae_lightning.models import DeepSVDD as Module
    from tests.conftest import VAL_SIZE

    class Watch(Callback):
        """Keeps the weights before the step that ends pretraining, and what each validation logged."""

        def __init__(self) -> None:
            self.before_centre: dict[str, torch.Tensor] = {}
            self.validations: list[tuple[int, bool, set[str]]] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if trainer.global_step == 3:  # the callbacks' hook runs before the module's
                self.before_centre = {k: v.clone() for k, v in pl_module.model.state_dict().items()}

        def on_validation_end(self, trainer, pl_module) -> None:
            logged = {key for key in trainer.callback_metrics if key.startswith("val/")}
            self.validations.append((trainer.global_step, pl_module.model.has_centre, logged))

    datamodule = MNISTDataModule(data_dir=str(data_dir), val_size=VAL_SIZE, batch_size=16)
    torch.manual_seed(0)
    module = Module(latent_dim=4, hidden_dims=[16], pretrain_steps=3)
    watch = Watch()
    trainer(tmp_path, max_steps=5, val_check_interval=2, callbacks=[watch]).fit(module, datamodule)
    (step, centred, logged), (later, centred_later, logged_later) = watch.validations
    assert (step, centred, later, centred_later) == (2, False, 4, True)
    assert "val/recon" in logged and "val/squared_distance" not in logged
    assert "val/squared_distance" in logged_later
    pretrained = DeepSVDD(latent_dim=4, hidden_dims=[16], pretrain_steps=3)
    pretrained.load_state_dict(watch.before_centre)
    training = datamodule.ordered_batches("train", 32, torch.device("cpu"))
    torch.testing.assert_close(module.model.centre, initial_centre(pretrained, training))


def test_pretrained_takes_the_encoder_of_a_bias_free_autoencoder_checkpoint(tmp_path) -> None:
    from ae_lightning.models import AE as AEModule
    from ae_lightning.models import DeepSVDD as Module

    def saved(name: str, **kwargs) -> Path:
        module = AEModule(latent_dim=4, hidden_dims=[16], **kwargs)
        fit = trainer(tmp_path)
        fit.strategy.connect(module)
        fit.save_checkpoint(tmp_path / name)
        return tmp_path / name

    bias_free = saved("ae.ckpt", bias=False)
    weights = torch.load(bias_free, weights_only=True)["state_dict"]
    model = DeepSVDD(latent_dim=4, hidden_dims=[16], pretrained=str(bias_free))
    for name, tensor in model.encoder.state_dict().items():
        assert torch.equal(tensor, weights[f"model.encoder.{name}"])
    # a checkpoint of the DeepSVDD holds its weights: reloading it needs not the autoencoder's file
    module = Module(latent_dim=4, hidden_dims=[16], pretrained=str(bias_free))
    fit = trainer(tmp_path)
    fit.strategy.connect(module)
    fit.save_checkpoint(tmp_path / "svdd.ckpt")
    assert "pretrained" not in module.hparams
    bias_free = bias_free.rename(tmp_path / "moved.ckpt")
    reloaded = Module.load_from_checkpoint(tmp_path / "svdd.ckpt")
    assert torch.equal(reloaded.model.encoder.net[1].weight, model.encoder.net[1].weight)

    (tmp_path / "notes.txt").write_text("not a checkpoint")
    torch.save({"weights": torch.ones(2)}, tmp_path / "tensor.pt")
    refusals = [
        (
            saved("biased.ckpt"),
            {},
            ConfigError,
            "has bias terms in its encoder: pretrain .* --model.bias false",
        ),
        (bias_free, {"latent_dim": 6}, ConfigError, r"differs from this model's \(backbone mlp, hidden_dims"),
        (tmp_path / "notes.txt", {}, CheckpointError, "is not a checkpoint that can be read as data"),
        (tmp_path / "tensor.pt", {}, CheckpointError, "no 'state_dict' entry"),
        (tmp_path / "missing.ckpt", {}, CheckpointError, "no such file"),
    ]
    for path, kwargs, error, message in refusals:
        with pytest.raises(error, match=message) as raised:
            DeepSVDD(**{"latent_dim": 4, "hidden_dims": [16], **kwargs}, pretrained=str(path))
        assert "\n" not in str(raised.value)


def test_the_config_fits_tests_predicts_and_exports_the_encoder_and_scorer(data_dir, in_tmp) -> None:
    """configs/deep_svdd.yaml through the CLI, one class: test logs the AUROC; predict gives scores and
    decisions; export writes no decoder, and its scorer gives the checkpoint's scores."""
    import numpy as np

    from ae_lightning.cli import main
    from ae_lightning.export.runtime import ExportedModel
    from tests.conftest import CONFIGS, run_folder, tiny

    flags = ["--config", str(CONFIGS / "deep_svdd.yaml"), *tiny(data_dir), "--trainer.max_epochs=2"]
    main(["fit", *flags])
    tested = main(["test", *flags, "--ckpt_path=last"])
    assert 0.0 <= tested.trainer.callback_metrics["test/auroc"].item() <= 1.0
    assert "test/mse" not in tested.trainer.callback_metrics  # no reconstruction to measure
    predicted = main(["predict", *flags, "--ckpt_path=last"])
    (first, *_) = predicted.trainer.predict_loop.predictions
    assert torch.isfinite(first["anomaly_score"]).all() and first["pred_anomaly"].dtype == torch.bool
    main(["export", *flags, "--ckpt_path=last", "--format=torchscript", f"--output={in_tmp / 'exported'}"])
    exported = ExportedModel(in_tmp / "exported")
    assert set(exported.files) == set(exported.spec["outputs"]) == {"encoder", "scorer"}
    test = predicted.datamodule.datasets["test"]
    pixels = test.images[torch.arange(5) if test.rows is None else test.rows[:5]].cpu().numpy()
    score, _ = exported.run("scorer", pixels)
    checkpoint = run_folder(in_tmp, "deep_svdd") / "checkpoints" / "last.ckpt"
    model = type(predicted.model).load_from_checkpoint(checkpoint).model.eval()
    with torch.no_grad():
        expected = model.anomaly_score(test[torch.arange(5)].to("cpu"))
    np.testing.assert_allclose(score, expected.numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_under_ddp_every_process_gets_the_centre_of_all_the_training_data(data_dir, tmp_path) -> None:
    """Two processes, each with half of the 72 training images, sum their code sums and counts: the centre
    is the one process's over all of them (centre_eps 0: the plain mean)."""
    from tests.conftest import CONFIGS, tiny
    from tests.test_scaling import cli

    flags = ["fit", "--config", str(CONFIGS / "deep_svdd.yaml"), *tiny(data_dir), "--trainer.max_steps=1",
             "--data.normal_classes=null", "--data.batch_size=8", "--model.centre_eps=0"]  # fmt: skip
    centres = []
    for name, more in (("ddp", ["--config", str(CONFIGS / "trainer" / "ddp.yaml"), "--trainer.devices=2"]),
                       ("one", [])):  # fmt: skip
        (tmp_path / name).mkdir()
        done = cli([*flags, *more], cwd=tmp_path / name)
        assert done.returncode == 0, done.stderr[-3000:]
        last = tmp_path / name / "runs" / "deep_svdd" / "version_0" / "checkpoints" / "last.ckpt"
        centres.append(torch.load(last, weights_only=True)["state_dict"]["model.centre"])
    assert centres[0].abs().min() > 0  # every entry is a mean, none was moved
    torch.testing.assert_close(centres[0], centres[1])
