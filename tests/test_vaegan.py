"""VAE/GAN: its terms against hand computations, which network each loss reaches, training in a plain loop."""

import copy

import pytest
import torch
import torch.nn.functional as F

from ae_lightning.autoencoders.interface import take_part_gradients
from ae_lightning.autoencoders.vae import gaussian_kl
from ae_lightning.autoencoders.vaegan import VAEGAN
from ae_lightning.batch import Batch
from ae_lightning.errors import ConfigError
from tests.test_autoencoders import fixed_batch


def small(**kwargs) -> VAEGAN:
    torch.manual_seed(0)
    return VAEGAN(**{"latent_dim": 3, "hidden_dims": [16], "feature_size": 6, **kwargs})


@pytest.mark.parametrize("generator_loss", ["non_saturating", "minimax"])
def test_terms_equal_a_hand_computation(generator_loss) -> None:
    model = small(gamma=0.7, generator_loss=generator_loss, beta=2.0)
    batch = fixed_batch(count=4)
    x = batch.inputs
    torch.manual_seed(3)
    terms = model.train().loss_terms(batch)
    # the same draws by hand: the posterior's noise, then the prior's
    torch.manual_seed(3)
    eps, z_prior = torch.randn(4, 3), torch.randn(4, 3)
    mu, logvar = model.encode(x)
    x_recon = model.decode(mu + (0.5 * logvar).exp() * eps)
    x_prior = model.decode(z_prior)
    dis = model.discriminator

    def probability(images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(dis.head(dis.features(images))[:, 0])

    real, recon, prior = probability(x), probability(x_recon), probability(x_prior)
    ones, zeros = torch.ones(4), torch.zeros(4)

    def bce(p: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy(p, target, reduction="none")

    llike = (dis.features(x) - dis.features(x_recon)).square().sum(1)
    kl = gaussian_kl(mu, logvar)
    if generator_loss == "non_saturating":
        generator = bce(recon, ones) + bce(prior, ones)  # -log D(x~) - log D(x_p)
    else:
        generator = -(bce(recon, zeros) + bce(prior, zeros))  # log(1 - D(x~)) + log(1 - D(x_p))
    expected = {
        "llike": llike,
        "kl": kl,
        "recon": (x_recon - x).square().flatten(1).sum(1),
        "loss": (x_recon - x).square().flatten(1).sum(1) + 2.0 * kl,
        "encoder_loss": llike + 2.0 * kl,
        "discriminator_loss": bce(real, ones) + bce(recon, zeros) + bce(prior, zeros),
        "generator_loss": generator,
        "decoder_loss": 0.7 * llike + generator,
        "d_real": real,
        "d_recon": recon,
        "d_prior": prior,
    }
    for key, value in expected.items():
        torch.testing.assert_close(terms[key], value, msg=key)
    assert all(value.shape == (4,) and value.dtype == torch.float32 for value in terms.values())


def test_each_loss_reaches_only_the_networks_the_paper_lets_it() -> None:
    model = small()
    terms = model.loss_terms(fixed_batch(count=4))
    networks = {"encoder": model.encoder, "decoder": model.decoder, "discriminator": model.discriminator}

    def reached(key: str) -> set[str]:
        found = set()
        for name, network in networks.items():
            gradients = torch.autograd.grad(
                terms[key].sum(), tuple(network.parameters()), retain_graph=True, allow_unused=True
            )
            if any(gradient is not None and gradient.abs().sum() > 0 for gradient in gradients):
                found.add(name)
        return found

    # Dis learns from its classification loss alone, and that reaches no other network
    assert reached("discriminator_loss") == {"discriminator"}
    assert reached("llike") == {"encoder", "decoder"}
    assert reached("generator_loss") == {"encoder", "decoder"}  # the encoder's part does not take it
    assert reached("encoder_loss") == {"encoder", "decoder"}


@pytest.mark.parametrize("stepping", ["encoder", "decoder", "discriminator"])
def test_a_part_gradient_reaches_only_its_own_parameters(stepping) -> None:
    model = small()
    parts = {part.name: part for part in model.checked_parts()}
    assert {name: part.loss for name, part in parts.items()} == {
        "encoder": "encoder_loss",
        "decoder": "decoder_loss",
        "discriminator": "discriminator_loss",
    }
    terms = model.loss_terms(fixed_batch(count=4))
    part = parts[stepping]
    expected = torch.autograd.grad(terms[part.loss].mean(), part.parameters, retain_graph=True)
    take_part_gradients(terms, [part], 0)
    for name, part in parts.items():
        if name == stepping:
            for parameter, gradient in zip(part.parameters, expected, strict=True):
                torch.testing.assert_close(parameter.grad, gradient)
        else:
            assert all(p.grad is None for p in part.parameters)


def test_trains_with_one_optimizer_per_part() -> None:
    """150 steps of one Adam per part on 16 uniform random 1x28x28 images (mlp [64], latent 8, 32 features):
    measured in the trained discriminator's features, the reconstructions' llike falls at least 5-fold from
    the untrained encoder's and decoder's (seen: 403 -> 12.8). llike at the current Dis rises meanwhile
    (seen: 0.16 -> 25), as Dis's features go from near-constant to discriminative."""
    torch.manual_seed(0)
    model = VAEGAN(latent_dim=8, hidden_dims=[64], feature_size=32).train()
    untrained = copy.deepcopy(model)
    batch = Batch(torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(5)))
    parts = model.checked_parts()
    optimizers = {part.name: torch.optim.Adam(part.parameters, lr=3e-3) for part in parts}
    for iteration in range(150):
        model.step = iteration
        for part in take_part_gradients(model.loss_terms(batch), parts, iteration):
            optimizers[part.name].step()
    untrained.discriminator.load_state_dict(model.discriminator.state_dict())

    def llike(autoencoder: VAEGAN) -> float:
        torch.manual_seed(1)
        with torch.no_grad():
            return autoencoder.eval().loss_terms(batch)["llike"].mean().item()

    assert llike(model) < llike(untrained) / 5


@pytest.mark.parametrize(
    "kwargs, shape",
    [
        ({"backbone": "conv", "hidden_dims": [4, 8], "discriminator_dims": [4]}, (3, 20, 12)),
        ({"backbone": "mlp", "hidden_dims": [8]}, (5,)),
    ],
    ids=["conv-rgb", "mlp-vectors"],
)
def test_other_backbones_and_shapes_under_bfloat16(kwargs, shape) -> None:
    model = VAEGAN(latent_dim=2, feature_size=4, image_shape=shape, **kwargs)
    model.checked_parts()
    batch = Batch(torch.rand(3, *shape))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = model.loss_terms(batch)
    assert all(v.shape == (3,) and v.dtype == torch.float32 and v.isfinite().all() for v in terms.values())


def test_samples_repeat_with_a_generator_and_the_code_is_the_posterior_mean() -> None:
    model = small().eval()
    first = model.sample(5, torch.Generator().manual_seed(4))
    torch.testing.assert_close(model.sample(5, torch.Generator().manual_seed(4)), first)
    assert first.shape == (5, 1, 28, 28)
    x = fixed_batch(count=3).inputs
    torch.testing.assert_close(model.code(x), model.encode(x)[0])
    assert not model.reports_likelihood()  # test/nll is off unless nll_samples asks for it


@pytest.mark.parametrize(
    "kwargs",
    [
        {"gamma": -1.0},
        {"feature_size": 0},
        {"generator_loss": "wasserstein"},
        {"discriminator_dims": [0]},
        {"backbone": "conv", "hidden_dims": [4], "discriminator_dims": []},
    ],
)
def test_refused_arguments(kwargs) -> None:
    with pytest.raises(ConfigError):
        small(**kwargs)
