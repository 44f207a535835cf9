"""FactorVAE and the adversarial autoencoder: their objectives against hand computations, each optimizer's
gradient confined to its part, and training with two optimizers in a plain loop."""

import math

import pytest
import torch
from torch import nn

from ae_lightning.autoencoders.adversarial import AdversarialAE
from ae_lightning.autoencoders.discriminators import CodeDiscriminator
from ae_lightning.autoencoders.factor_vae import FactorVAE, permute_dims
from ae_lightning.autoencoders.interface import take_part_gradients
from ae_lightning.errors import ConfigError
from tests.split_models import train_in_parts
from tests.test_autoencoders import fixed_batch, make

SMALL = {"discriminator_dims": [32]}


def set_discriminator(
    discriminator: CodeDiscriminator, weights: list[list[float]], biases: list[float]
) -> None:
    """Hand-set weights: one 1 x D first layer (logistic regression) or two layers (one hidden)."""
    linears = [layer for layer in discriminator.net if isinstance(layer, nn.Linear)]
    with torch.no_grad():
        for layer, weight, bias in zip(linears, weights, biases, strict=True):
            layer.weight.copy_(torch.tensor(weight).view_as(layer.weight))
            layer.bias.fill_(bias)


def sigmoid(value: float) -> float:
    return 1 / (1 + math.exp(-value))


# --- the shuffle of FactorVAE ---


def test_permute_dims_keeps_each_column_and_mixes_rows() -> None:
    torch.manual_seed(0)
    z = torch.randn(64, 4)
    shuffled = permute_dims(z)
    for unit in range(4):  # each latent unit keeps its values, in another order
        torch.testing.assert_close(shuffled[:, unit].sort().values, z[:, unit].sort().values)
        assert not torch.equal(shuffled[:, unit], z[:, unit])
    # each column has its own order: a shuffled row is almost never a row of z (here none of 64 is)
    kept = (shuffled[:, None, :] == z[None, :, :]).all(2).any(1)
    assert kept.sum() == 0
    sources = [(shuffled[:, unit, None] == z[None, :, unit]).float().argmax(1) for unit in range(4)]
    assert all(not torch.equal(sources[0], other) for other in sources[1:])


# --- FactorVAE ---


def factor_vae_by_hand(gamma: float = 2.0) -> tuple[FactorVAE, torch.Tensor]:
    """FactorVAE with D(z) = 0.5 lrelu(z_0) - 2 lrelu(-z_1) + 0.3 (LeakyReLU slope 0.2), and a batch."""
    model = make(FactorVAE, {"gamma": gamma, "discriminator_dims": [2]}).eval()
    first = [[1.0] + [0.0] * 7, [0.0, -1.0] + [0.0] * 6]
    set_discriminator(model.discriminator, [first, [0.5, -2.0]], [0.0, 0.3])
    return model, fixed_batch(count=4)


def leaky(value: float) -> float:
    return value if value > 0 else 0.2 * value


def hand_logit(code: list[float]) -> float:
    return 0.5 * leaky(code[0]) - 2.0 * leaky(-code[1]) + 0.3


def test_factor_vae_tc_is_the_discriminators_logit_at_the_posterior_draw() -> None:
    model, batch = factor_vae_by_hand(gamma=2.0)
    torch.manual_seed(7)
    terms = model.loss_terms(batch)
    torch.manual_seed(7)  # the same posterior draw
    mu, logvar = model.encode(batch.inputs)
    z = mu + (0.5 * logvar).exp() * torch.randn_like(mu)
    tc = torch.tensor([hand_logit(code) for code in z.tolist()])
    assert tc.abs().min() > 0.01 and tc.std() > 0.01  # a case where the logit is not trivially zero
    torch.testing.assert_close(terms["tc"], tc)
    torch.testing.assert_close(terms["loss"], terms["recon"] + terms["kl"] + 2.0 * tc)


def test_factor_vae_discriminator_loss_is_the_binary_cross_entropy_against_shuffled_codes() -> None:
    model, batch = factor_vae_by_hand()
    torch.manual_seed(3)
    terms = model.loss_terms(batch)
    torch.manual_seed(3)  # the posterior draw, then the shuffle's uniform numbers
    mu, logvar = model.encode(batch.inputs)
    z = mu + (0.5 * logvar).exp() * torch.randn_like(mu)
    shuffled = z.gather(0, torch.rand(z.shape).argsort(0))
    joint = [hand_logit(code) for code in z.tolist()]  # label 1: from q(z)
    product = [hand_logit(code) for code in shuffled.tolist()]  # label 0: from the product of marginals
    expected = [
        0.5 * (-math.log(sigmoid(a)) - math.log(1 - sigmoid(b))) for a, b in zip(joint, product, strict=True)
    ]
    torch.testing.assert_close(terms["discriminator_loss"], torch.tensor(expected))
    accuracy = [0.5 * ((a > 0) + (b < 0)) for a, b in zip(joint, product, strict=True)]
    torch.testing.assert_close(terms["discriminator_accuracy"], torch.tensor(accuracy))


def test_factor_vae_discriminator_finds_the_total_correlation_of_dependent_codes() -> None:
    """Codes whose 8 units are one number repeated (posterior std e^-5): D learns to tell them from their
    shuffle, and the TC estimate grows well above 0."""
    model = make(FactorVAE, SMALL).train()
    batch = fixed_batch()
    last = model.encoder.net[-1]
    with torch.no_grad():
        features = model.encoder.net[:-1](batch.inputs)
        direction = torch.randn(features.shape[1])
        shared = features @ direction
        last.weight.zero_()
        last.bias.zero_()
        last.weight[:8] = direction / shared.std()  # every unit of mu is the same standardised number
        last.bias[:8] = -shared.mean() / shared.std()
        last.bias[8:] = -10.0
    discriminator = next(part for part in model.checked_parts() if part.name == "discriminator")
    optimizer = torch.optim.Adam(discriminator.parameters, lr=1e-2)
    for step in range(200):
        take_part_gradients(model.loss_terms(batch), [discriminator], step)
        optimizer.step()
    terms = model.loss_terms(batch)
    assert terms["discriminator_accuracy"].mean() > 0.9  # seen: 1.0
    assert terms["tc"].mean() > 2.0  # seen: 4.7


# --- the adversarial autoencoder ---


def test_aae_losses_are_the_hand_binary_cross_entropies() -> None:
    model = make(AdversarialAE, {"adversarial_weight": 0.7, "prior_std": 2.0, "discriminator_dims": []})
    set_discriminator(model.discriminator, [[0.4, -0.3, 0.2, 0.0, 0.1, -0.5, 0.3, 0.6]], [-0.2])
    batch = fixed_batch(count=4)
    torch.manual_seed(11)
    terms = model.eval().loss_terms(batch)
    torch.manual_seed(11)
    prior = 2.0 * torch.randn(4, 8)
    weights = [0.4, -0.3, 0.2, 0.0, 0.1, -0.5, 0.3, 0.6]

    def logit(code: list[float]) -> float:
        return sum(w * c for w, c in zip(weights, code, strict=True)) - 0.2

    codes = [logit(code) for code in model.code(batch.inputs).tolist()]  # label 0: a code
    draws = [logit(code) for code in prior.tolist()]  # label 1: a prior draw
    generator = [-math.log(sigmoid(c)) for c in codes]  # the encoder wants its codes taken for draws
    discriminator = [
        -math.log(sigmoid(d)) - math.log(1 - sigmoid(c)) for c, d in zip(codes, draws, strict=True)
    ]
    torch.testing.assert_close(terms["adversarial"], torch.tensor(generator))
    torch.testing.assert_close(terms["discriminator_loss"], torch.tensor(discriminator))
    torch.testing.assert_close(terms["loss"], terms["recon"] + 0.7 * torch.tensor(generator))
    torch.testing.assert_close(
        terms["recon"], model.reconstruction_loss(model.decoder(model.code(batch.inputs)), batch.inputs)
    )


def test_aae_discriminator_separates_shifted_codes_and_the_encoder_is_pushed_back() -> None:
    """Codes all at 3 (8 units) against N(0, I) draws: D learns to tell them apart, and the generator's
    gradient then moves the codes towards the prior."""
    model = make(AdversarialAE, SMALL).train()
    batch = fixed_batch()
    last = model.encoder.net[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(3.0)
    parts = {part.name: part for part in model.checked_parts()}
    optimizer = torch.optim.Adam(parts["discriminator"].parameters, lr=1e-2)
    torch.manual_seed(0)
    before = model.loss_terms(batch)
    for step in range(100):
        take_part_gradients(model.loss_terms(batch), [parts["discriminator"]], step)
        optimizer.step()
    after = model.loss_terms(batch)
    assert after["discriminator_accuracy"].mean() > 0.95  # seen: 1.0
    assert after["discriminator_loss"].mean() < 0.1 < before["discriminator_loss"].mean()
    assert after["adversarial"].mean() > 3.0  # D is sure the codes are not draws
    (bias_gradient,) = torch.autograd.grad(after["loss"].mean(), last.bias)
    assert (bias_gradient > 0).all()  # a descent step lowers every code towards the prior's mean, 0


def test_aae_samples_are_decoded_prior_draws_repeatable_with_a_generator() -> None:
    model = make(AdversarialAE, {**SMALL, "prior_std": 0.5}).eval()
    samples = model.sample(6, torch.Generator().manual_seed(4))
    expected = model.decode(0.5 * torch.randn(6, 8, generator=torch.Generator().manual_seed(4)))
    torch.testing.assert_close(samples, expected)
    x = fixed_batch(count=3).inputs
    torch.testing.assert_close(model.code(x), model.code(x))  # the code is deterministic


# --- both: the optimizers' parts, training ---


@pytest.mark.parametrize("cls", [FactorVAE, AdversarialAE])
def test_each_loss_reaches_only_its_own_part(cls) -> None:
    model = make(cls, SMALL).train()
    parts = {part.name: part for part in model.checked_parts()}
    assert list(parts) == ["autoencoder", "discriminator"]
    discriminator_ids = {id(p) for p in model.discriminator.parameters()}
    assert {id(p) for p in parts["discriminator"].parameters} == discriminator_ids
    batch = fixed_batch(count=6)
    for name, other in (("autoencoder", "discriminator"), ("discriminator", "autoencoder")):
        model.zero_grad(set_to_none=True)
        take_part_gradients(model.loss_terms(batch), [parts[name]], 0)
        assert all(p.grad is None for p in parts[other].parameters)
        assert sum(p.grad.abs().sum() for p in parts[name].parameters) > 0
    # D's loss sees detached codes: no gradient reaches the encoder at all (not only none is taken)
    terms = model.loss_terms(batch)
    encoder = tuple(model.encoder.parameters())
    assert all(
        g is None for g in torch.autograd.grad(terms["discriminator_loss"].mean(), encoder, allow_unused=True)
    )
    # while the autoencoder's regulariser does train the encoder through D
    regulariser = terms["tc"] if cls is FactorVAE else terms["adversarial"]
    assert sum(g.abs().sum() for g in torch.autograd.grad(regulariser.mean(), encoder)) > 0


@pytest.mark.parametrize("cls", [FactorVAE, AdversarialAE])
def test_two_optimizers_train_in_a_plain_loop(cls) -> None:
    """150 steps of two Adams on one batch cut the reconstruction term at least 5-fold (seen: FactorVAE
    144 -> 11, the AAE 141 -> 2) while D keeps learning."""
    model = make(cls, SMALL).train()
    batch = fixed_batch()

    def terms() -> dict[str, torch.Tensor]:
        torch.manual_seed(1)  # the same noise at both ends
        return {name: value.mean().item() for name, value in model.loss_terms(batch).items()}

    first = terms()
    train_in_parts(model, batch)
    last = terms()
    assert last["recon"] < first["recon"] / 5
    assert all(math.isfinite(value) for value in last.values())
    assert last["discriminator_loss"] < first["discriminator_loss"]


@pytest.mark.parametrize(
    "cls, arguments, message",
    [
        (FactorVAE, {"gamma": -1.0}, "gamma must be >= 0"),
        (FactorVAE, {"discriminator_dims": [16, 0]}, "discriminator_dims must be positive"),
        (AdversarialAE, {"adversarial_weight": -0.5}, "adversarial_weight must be >= 0"),
        (AdversarialAE, {"prior_std": 0.0}, "prior_std must be > 0"),
    ],
)
def test_bad_arguments_are_refused_in_one_line(cls, arguments, message) -> None:
    with pytest.raises(ConfigError, match=message):
        make(cls, arguments)
