"""The torch autoencoders, with no Trainer: interface, objectives against hand computations, input checks."""

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from ae_lightning.autoencoders import (
    AE,
    VAE,
    Conditional,
    DeepSVDD,
    DenoisingAE,
    LatentModel,
    Reconstructs,
    SeveralOptimizers,
)
from ae_lightning.autoencoders.dae import shift
from ae_lightning.autoencoders.deep_svdd import initial_centre
from ae_lightning.autoencoders.vae import gaussian_kl
from ae_lightning.batch import Batch
from ae_lightning.errors import ConfigError
from tests.split_models import train_in_parts
from tests.variants import IDS, TORCH_CASES


def make(cls: type[LatentModel], extra: dict, **kwargs) -> LatentModel:
    torch.manual_seed(0)
    model = cls(**{"latent_dim": 8, "hidden_dims": [64], **extra, **kwargs})
    if isinstance(model, DeepSVDD):  # its loss and score need the centre that training sets from the data
        model.set_centre(initial_centre(model, [fixed_batch(model.value_range)]))
    return model


def fixed_images(value_range=(0.0, 1.0), count: int = 16) -> torch.Tensor:
    """Images with structure (a bright square per class) in the given range, (count, 1, 28, 28)."""
    from tests.conftest import tiny_digits

    images, _ = tiny_digits(count, seed=3)
    low, high = value_range
    return (images.float() / 255 * (high - low) + low).unsqueeze(1)


def fixed_batch(value_range=(0.0, 1.0), count: int = 16) -> Batch:
    """`fixed_images` with their labels (0, 1, ..., 9, 0, ...) and indices."""
    return Batch(fixed_images(value_range, count), torch.arange(count) % 10, index=torch.arange(count))


def tensor_inputs(model: LatentModel, batch: Batch) -> tuple[torch.Tensor, ...]:
    """What the model's tensor methods take besides the images: a conditional model's labels."""
    return (batch.labels,) if isinstance(model, Conditional) else ()


@pytest.mark.parametrize("cls, extra", TORCH_CASES, ids=IDS)
@pytest.mark.parametrize("backbone, hidden_dims", [("mlp", [64]), ("conv", [8, 16])])
def test_interface_shapes(cls, extra, backbone, hidden_dims) -> None:
    model = make(cls, extra, backbone=backbone, hidden_dims=hidden_dims).eval()
    batch = fixed_batch(count=5)
    x, given = batch.inputs, tensor_inputs(model, batch)
    assert model.code(x, *given).shape == (5, 8)
    assert model.latent(batch).shape == (5, 8)
    if isinstance(model, Reconstructs):
        assert model.decode(torch.randn(5, 8), *given).shape == x.shape
        assert model(x, *given).shape == x.shape
        assert model.reconstruct(batch).shape == x.shape
    else:  # a model without a decoder gives the code
        assert model(x, *given).shape == (5, 8)
    score = model.anomaly_score(batch)
    assert score.shape == (5,) and torch.isfinite(score).all()
    for mode in (model.train, model.eval):
        terms = mode().loss_terms(batch)
        assert all(value.shape == (5,) and torch.isfinite(value).all() for value in terms.values())


@pytest.mark.parametrize("cls, extra", TORCH_CASES, ids=IDS)
@pytest.mark.parametrize(
    "backbone, hidden_dims", [("mlp", [64]), pytest.param("conv", [8, 16], marks=pytest.mark.slow)]
)
def test_trains_in_a_plain_loop(cls, extra, backbone, hidden_dims) -> None:
    """No Trainer: 150 Adam steps on one batch cut the training loss at least 5-fold (seen: 8x conv to 116x
    mlp; the conv cases, a minute in all, run in the full suite only). A model with several optimizers takes
    one Adam per part (`take_part_gradients`): one Adam on every parameter would let its discriminator
    minimise the autoencoder's loss too. Where no part minimises `loss` (VAE/GAN's is the pixel ELBO, which
    it reports but does not train on) the loss need only fall: tests/test_vaegan.py measures its training in
    the discriminator's features."""
    model = make(cls, extra, backbone=backbone, hidden_dims=hidden_dims).train()
    batch = fixed_batch()

    def loss() -> torch.Tensor:
        torch.manual_seed(1)  # the same corruption / posterior noise at both ends
        return model.loss_terms(batch)["loss"].mean()

    first = loss().item()
    train_in_parts(model, batch)
    parts = model.checked_parts() if isinstance(model, SeveralOptimizers) else ()
    trained_on_loss = not parts or any(part.loss == "loss" for part in parts)
    assert loss().item() < first / (5 if trained_on_loss else 1)


@pytest.mark.parametrize("value_range, bounds", [((-1.0, 1.0), (-1, 1)), ((0.0, 1.0), (0, 1))])
def test_gaussian_output_activation_follows_the_value_range(value_range, bounds) -> None:
    model = make(AE, {}, value_range=value_range)
    out = model.decode(100 * torch.randn(64, 8))
    assert out.min() >= bounds[0] and out.max() <= bounds[1]
    assert out.min() < bounds[0] + 0.1 and out.max() > bounds[1] - 0.1  # the whole range is reachable


def test_gaussian_reconstruction_is_summed_squared_error() -> None:
    model = make(AE, {}, value_range=(-1.0, 1.0))
    x = fixed_images((-1.0, 1.0))
    raw = model.decoder(model.code(x))
    expected = ((torch.tanh(raw) - x) ** 2).sum(dim=(1, 2, 3))
    torch.testing.assert_close(model.reconstruction_loss(raw, x), expected)


def test_bernoulli_reconstruction_is_binary_cross_entropy_with_logits() -> None:
    model = make(VAE, {}, likelihood="bernoulli")
    x = torch.bernoulli(fixed_images())
    logits = torch.randn_like(x)
    expected = torch.stack(
        [
            F.binary_cross_entropy_with_logits(lo, xi, reduction="sum")
            for lo, xi in zip(logits, x, strict=True)
        ]
    )
    torch.testing.assert_close(model.reconstruction_loss(logits, x), expected)
    # decode gives the Bernoulli mean, in [0, 1]
    z = torch.randn(3, 8)
    torch.testing.assert_close(model.decode(z), torch.sigmoid(model.decoder(z)))


def test_kl_term_equals_torch_distributions() -> None:
    mu, logvar = torch.randn(6, 8), torch.randn(6, 8)
    posterior = Normal(mu, (0.5 * logvar).exp())
    prior = Normal(torch.zeros(8), torch.ones(8))
    expected = kl_divergence(posterior, prior).sum(1)
    torch.testing.assert_close(gaussian_kl(mu, logvar), expected)


def test_vae_loss_is_reference_objective() -> None:
    """(summed squared error + beta * KL) / batch size, with the decoder fed a reparameterised sample."""
    model = make(VAE, {"beta": 0.5}, value_range=(-1.0, 1.0)).eval()
    batch = fixed_batch((-1.0, 1.0))
    x = batch.inputs
    torch.manual_seed(7)
    loss = model.loss_terms(batch)["loss"].mean()
    torch.manual_seed(7)
    mu, logvar = model.encoder(x).chunk(2, dim=1)
    z = mu + (0.5 * logvar).exp() * torch.randn_like(mu)
    sse = F.mse_loss(torch.tanh(model.decoder(z)), x, reduction="sum")
    kl = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum()
    torch.testing.assert_close(loss, (sse + 0.5 * kl) / len(x))


def test_vae_anomaly_score_is_negative_elbo() -> None:
    model = make(VAE, {"beta": 3.0}).eval()  # the score ignores beta: it is the ELBO
    batch = fixed_batch(count=4)
    torch.manual_seed(0)
    score = model.anomaly_score(batch, num_samples=200)
    terms = [model.loss_terms(batch) for _ in range(200)]
    neg_elbo = torch.stack([t["recon"] + t["kl"] for t in terms]).mean(0)
    torch.testing.assert_close(score, neg_elbo, rtol=0.02, atol=0.0)
    # fixed draws: the same score every time, and an image's score does not depend on its batch
    torch.testing.assert_close(model.anomaly_score(batch), model.anomaly_score(batch))
    alone = model.anomaly_score(batch.with_inputs(batch.inputs[:1]))
    torch.testing.assert_close(alone, model.anomaly_score(batch)[:1])


def test_vae_samples_from_the_prior_repeatably() -> None:
    model = make(VAE, {}, value_range=(-1.0, 1.0))
    first = model.sample(5, generator=torch.Generator().manual_seed(3))
    again = model.sample(5, generator=torch.Generator().manual_seed(3))
    assert first.shape == (5, 1, 28, 28)
    torch.testing.assert_close(first, again)
    assert not torch.equal(first, model.sample(5))


def test_vae_forward_and_latent_use_the_posterior_mean() -> None:
    model = make(VAE, {})
    batch = fixed_batch(count=3)
    mu, _ = model.encode(batch.inputs)
    torch.testing.assert_close(model.latent(batch), mu)
    torch.testing.assert_close(model(batch.inputs), model.decode(mu))
    torch.testing.assert_close(model.reconstruct(batch), model.decode(mu))


def test_denoising_corrupts_the_input_in_training_and_never_the_target() -> None:
    model = make(DenoisingAE, {"noise_std": 0.5})
    batch = fixed_batch()
    x = batch.inputs
    original = x.clone()
    seen = {}
    model.encoder.register_forward_pre_hook(lambda _, args: seen.setdefault("inputs", []).append(args[0]))
    targets = []
    reconstruction_loss = model.reconstruction_loss
    model.reconstruction_loss = lambda out, target: targets.append(target) or reconstruction_loss(out, target)

    model.train().loss_terms(batch)
    assert not torch.allclose(seen["inputs"][0], x)  # the encoder saw a corrupted image
    assert targets[0] is x and torch.equal(x, original)  # the target is the clean image, left untouched

    seen.clear(), targets.clear()
    model.eval().start_evaluation()
    terms = model.loss_terms(batch)
    assert torch.equal(seen["inputs"][0], x) and not torch.allclose(seen["inputs"][1], x)
    assert all(target is x for target in targets)
    assert set(terms) == {"loss", "recon", "recon_corrupted"}
    torch.testing.assert_close(terms["loss"], terms["recon"])
    assert (terms["recon_corrupted"] > terms["recon"]).float().mean() > 0.5


@pytest.mark.parametrize("value_range", [(0.0, 1.0), (-1.0, 1.0)])
def test_each_corruption_does_what_it_says(value_range) -> None:
    low, high = value_range
    x = torch.full((64, 1, 28, 28), (low + high) / 2)
    generator = partial(lambda: torch.Generator().manual_seed(0))

    masked = make(DenoisingAE, {"noise_std": 0, "mask_prob": 0.3}, value_range=value_range).corrupt(
        x, generator()
    )
    assert (masked == low).float().mean() == pytest.approx(0.3, abs=0.01)

    sp = make(DenoisingAE, {"noise_std": 0, "salt_pepper_prob": 0.2}, value_range=value_range).corrupt(
        x, generator()
    )
    assert (sp == low).float().mean() == pytest.approx(0.1, abs=0.01)
    assert (sp == high).float().mean() == pytest.approx(0.1, abs=0.01)

    noisy = make(DenoisingAE, {"noise_std": 0.25}, value_range=value_range).corrupt(x, generator())
    assert (noisy - x).std().item() == pytest.approx(0.25, rel=0.02)


def test_shifting_moves_each_image_whole_and_fills_the_border() -> None:
    """Every corrupted image is its clean image moved by one (dy, dx) within the limit, all channels alike,
    the uncovered border at the bottom of the range; over 500 images every one of the 25 moves occurs."""
    torch.manual_seed(0)
    x = torch.rand(500, 3, 12, 10) + 1  # in [1, 2): no pixel equals the fill
    model = make(DenoisingAE, {"noise_std": 0, "shift_pixels": 2}, image_shape=(3, 12, 10))
    shifted = model.corrupt(x, torch.Generator().manual_seed(0))
    low = model.value_range[0]
    moves = []
    for image, moved in zip(x, shifted, strict=True):
        found = [
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if torch.equal(
                moved, F.pad(image, (2, 2, 2, 2), value=low)[:, 2 - dy : 14 - dy, 2 - dx : 12 - dx]
            )
        ]
        assert len(found) == 1
        moves.append(found[0])
    assert len(set(moves)) == 25
    assert torch.equal(
        model.corrupt(x[:8], torch.Generator().manual_seed(1)),
        shift(x[:8], 2, low, torch.Generator().manual_seed(1)),
    )


def test_eval_corruption_is_the_same_every_epoch() -> None:
    model = make(DenoisingAE, {"noise_std": 0.3}).eval()
    batch = fixed_batch()
    model.start_evaluation()
    first = model.loss_terms(batch)["recon_corrupted"]
    model.start_evaluation()
    torch.testing.assert_close(model.loss_terms(batch)["recon_corrupted"], first)


@pytest.mark.parametrize("cls, extra", TORCH_CASES, ids=IDS)
@pytest.mark.parametrize("latent_dim", [0, -3])
def test_every_variant_refuses_a_non_positive_latent_dim(cls, extra, latent_dim) -> None:
    with pytest.raises(ConfigError, match="latent_dim must be a positive"):
        cls(**{**extra, "latent_dim": latent_dim})


@pytest.mark.parametrize("latent_dim", [784, 1000])
def test_ae_refuses_a_latent_at_least_as_large_as_the_input(latent_dim) -> None:
    with pytest.raises(ConfigError, match="identity map"):
        AE(latent_dim=latent_dim)
    DenoisingAE(latent_dim=latent_dim, hidden_dims=[16])  # the denoising objective rules the identity out


@pytest.mark.parametrize(
    "cls, kwargs, message",
    [
        (DenoisingAE, {"noise_std": -0.1}, "noise_std must be >= 0"),
        (DenoisingAE, {"mask_prob": 1.0}, "mask_prob must be a probability"),
        (DenoisingAE, {"salt_pepper_prob": -0.5}, "salt_pepper_prob must be a probability"),
        (DenoisingAE, {"noise_std": 0.0}, "needs a corruption"),
        (DenoisingAE, {"shift_pixels": -1}, r"shift_pixels must be a number of pixels in \[0, 28\)"),
        (DenoisingAE, {"shift_pixels": 28}, "for images of 28x28, got 28"),
        (VAE, {"beta": -1.0}, "beta must be >= 0"),
        (VAE, {"likelihood": "bernoulli", "value_range": (-1.0, 1.0)}, "bernoulli.*--data.value_range"),
        (AE, {"value_range": (0.0, 255.0)}, r"value_range must be \[-1, 1\] or \[0, 1\]"),
        (AE, {"backbone": "conv", "hidden_dims": []}, "at least one for the conv"),
        (AE, {"hidden_dims": [0]}, "hidden_dims must be positive"),
        (AE, {"likelihood": "poisson"}, "likelihood must be"),
        (AE, {"image_shape": (28, 28)}, r"image_shape must be \(channels, height, width\)"),
    ],
)
def test_bad_arguments_are_refused_with_a_clear_message(cls, kwargs, message) -> None:
    with pytest.raises(ConfigError, match=message):
        cls(**kwargs)


@pytest.mark.parametrize("cls, extra", TORCH_CASES, ids=IDS)
def test_losses_are_float32_under_bfloat16_autocast(cls: type[LatentModel], extra: dict) -> None:
    """Mixed precision runs the layers in bfloat16, but every loss term is summed in float32."""
    model = make(cls, extra)
    batch = fixed_batch(count=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")
        terms = model.loss_terms(batch)
    assert {name: term.dtype for name, term in terms.items()} == dict.fromkeys(terms, torch.float32)
