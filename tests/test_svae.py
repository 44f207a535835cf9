"""SVAE: log I_v against mpmath, the vMF sampler, density and KL against theory, the model."""

import math
import warnings

import mpmath
import pytest
import torch
import torch.nn.functional as F

from ae_lightning.autoencoders.bessel import bessel_ratio, log_bessel_iv, log_bessel_reduced
from ae_lightning.autoencoders.svae import (
    SVAE,
    log_sphere_area,
    vmf_kl,
    vmf_log_density,
    vmf_log_normalizer,
    vmf_noise,
    vmf_sample,
    vmf_sample_from_noise,
    wood_accepts,
)
from ae_lightning.errors import ConfigError
from tests.syncs import assert_model_waits_for_nothing
from tests.test_autoencoders import fixed_batch, make

ORDERS = [0.0, 0.5, 1.0, 3.5, 7.0, 31.0, 127.0]
KAPPAS = [1e-3, 0.1, 1.0, 10.0, 100.0, 1e3, 1e4]
mpmath.mp.dps = 30


def reference(order: float, kappa: float) -> tuple[float, float, float]:
    """log I_v(k), its derivative I_{v+1}/I_v + v/k and the ratio I_{v+1}/I_v, by mpmath."""
    value, upper = mpmath.besseli(order, kappa), mpmath.besseli(order + 1, kappa)
    ratio = upper / value
    return float(mpmath.log(value)), float(ratio + mpmath.mpf(order) / kappa), float(ratio)


@pytest.mark.parametrize("order", ORDERS)
def test_log_bessel_and_its_gradient_match_mpmath(order) -> None:
    """Measured: relative error of log I_v <= 1.3e-12, of its gradient and of the ratio <= 5e-13."""
    kappa = torch.tensor(KAPPAS, dtype=torch.float64, requires_grad=True)
    value = log_bessel_iv(order, kappa)
    (gradient,) = torch.autograd.grad(value.sum(), kappa)
    expected = torch.tensor([reference(order, k) for k in KAPPAS], dtype=torch.float64)
    torch.testing.assert_close(value, expected[:, 0], rtol=1e-10, atol=0.0)
    torch.testing.assert_close(gradient, expected[:, 1], rtol=1e-10, atol=0.0)
    torch.testing.assert_close(bessel_ratio(order, kappa.detach()), expected[:, 2], rtol=1e-10, atol=0.0)
    # float32: finite, and as close as its digits allow (log I_0(1e-3) ~ 2.5e-7 is a difference with kappa)
    kappa32 = kappa.detach().float().requires_grad_()
    value32 = log_bessel_iv(order, kappa32)
    (gradient32,) = torch.autograd.grad(value32.sum(), kappa32)
    assert torch.isfinite(value32).all() and torch.isfinite(gradient32).all()
    scale = expected[:, 0].abs().clamp_min(1.0)
    assert ((value32.double() - expected[:, 0]).abs() / scale).max() < 1e-5  # seen: 2e-6
    assert ((gradient32.double() - expected[:, 1]).abs() / expected[:, 1]).max() < 1e-6  # seen: 1e-7


@pytest.mark.parametrize("order", [0.0, 2.5, 15.5, 16.0, 300.0])
def test_log_bessel_gradients_are_the_derivatives_of_the_values(order) -> None:
    """Both outputs, on either side of the switch from the power series to the recurrence (kappa = 2)."""
    kappa = torch.tensor([3e-4, 0.7, 1.999, 2.001, 9.0, 400.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda k: log_bessel_reduced(order, k), (kappa,))


def test_log_bessel_stays_finite_in_float32_at_extreme_kappas() -> None:
    kappa = torch.tensor([1e-30, 1e-8, 1e-4, 2.0, 1e5, 1e9, 1e20, 3e38], requires_grad=True)
    for order in (0.0, 3.5, 255.0):
        reduced, log_ratio = log_bessel_reduced(order, kappa)
        (gradient,) = torch.autograd.grad((reduced + log_ratio).sum(), kappa)
        assert torch.isfinite(reduced).all() and torch.isfinite(log_ratio).all()
        assert torch.isfinite(gradient).all()


@pytest.mark.parametrize("dim, kappa", [(2, 1.0), (3, 5.0), (10, 50.0), (32, 20.0), (8, 1000.0)])
def test_samples_are_unit_vectors_around_mu_with_the_mean_resultant_length_of_theory(dim, kappa) -> None:
    """E[mu.z] = A_D(kappa) = I_{D/2}/I_{D/2-1}, within 4 standard errors of 20k samples."""
    count = 20_000
    generator = torch.Generator().manual_seed(dim)
    mu = F.normalize(torch.randn(dim, generator=generator), dim=0)
    z = vmf_sample(mu.expand(count, dim), torch.full((count,), kappa), generator=generator)
    assert ((z.norm(dim=1) - 1).abs() < 1e-6).all()
    w = z @ mu
    mean_resultant = float(mpmath.besseli(dim / 2, kappa) / mpmath.besseli(dim / 2 - 1, kappa))
    assert abs(w.mean().item() - mean_resultant) < 4 * w.std().item() / math.sqrt(count)
    assert F.cosine_similarity(z.mean(0), mu, dim=0) > 0.999  # the mean direction is mu


def test_rejection_with_a_fixed_number_of_proposals_almost_never_falls_back() -> None:
    """Wood's acceptance rate is >= 0.65 on a grid of dimensions and concentrations (lowest for D = 2,
    large kappa), so all 32 proposals are rejected with probability < 0.35^32 ~ 3e-15."""
    generator = torch.Generator().manual_seed(0)
    for dim in (2, 3, 8, 64, 512):
        normals = torch.randn(4000, 1, dim, generator=generator)
        beta = 0.5 * (1 + normals[..., 0] / normals.norm(dim=-1))  # Beta((D-1)/2, (D-1)/2), (4000, 1)
        kappa = torch.tensor([1e-3, 1.0, 10.0, 100.0, 1e3, 1e5])
        accepted = wood_accepts(kappa, dim, beta, torch.rand(4000, 1, generator=generator))
        assert accepted.float().mean(0).min() > 0.63


def test_sampler_gradient_is_the_derivative_at_the_accepted_proposal() -> None:
    """For fixed noise the sample is a smooth function of mu and kappa (the accepted proposal does not move
    under a small change): its autograd gradient is that derivative (Davidson et al.'s g_rep)."""
    generator = torch.Generator().manual_seed(0)
    noise = vmf_noise((4,), 5, generator=generator)
    noise = type(noise)(*(part.double() for part in noise))
    mu = F.normalize(torch.randn(4, 5, dtype=torch.float64, generator=generator), dim=1).requires_grad_()
    kappa = torch.tensor([0.5, 3.0, 40.0, 900.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda m, k: vmf_sample_from_noise(m, k, noise), (mu, kappa))


def test_sampler_is_differentiable_in_mu_and_kappa() -> None:
    mu = F.normalize(torch.randn(5, 6), dim=1).requires_grad_()
    kappa = torch.tensor([0.5, 2.0, 10.0, 100.0, 1e4], requires_grad=True)
    z = vmf_sample(mu, kappa, generator=torch.Generator().manual_seed(0))
    grad_mu, grad_kappa = torch.autograd.grad((z * torch.randn(5, 6)).sum(), (mu, kappa))
    assert torch.isfinite(grad_mu).all() and torch.isfinite(grad_kappa).all()
    assert (grad_kappa != 0).all() and (grad_mu.abs().sum(1) > 0).all()
    # mu = e1 exactly: the reflection is the identity, with finite gradients
    e1 = torch.eye(6)[:1].requires_grad_()
    z = vmf_sample(e1, torch.tensor([1e3]), generator=torch.Generator().manual_seed(0))
    assert z[0, 0] > 0.99 and torch.isfinite(torch.autograd.grad(z.sum(), e1)[0]).all()


@pytest.mark.parametrize("kappa", [1e-3, 0.5, 3.0, 50.0, 700.0])
def test_kl_in_three_dimensions_is_the_closed_form(kappa) -> None:
    """D = 3: KL = kappa coth(kappa) - 1 + log(kappa / sinh(kappa)); log C_3 = log(kappa / (4 pi sinh))."""
    k = mpmath.mpf(kappa)
    kl = k * mpmath.coth(k) - 1 + mpmath.log(k / mpmath.sinh(k))
    log_normalizer = mpmath.log(k / (4 * mpmath.pi * mpmath.sinh(k)))
    kappa64 = torch.tensor([kappa], dtype=torch.float64)
    torch.testing.assert_close(
        vmf_kl(kappa64, 3), torch.tensor([float(kl)], dtype=torch.float64), rtol=1e-9, atol=0
    )
    expected = torch.tensor([float(log_normalizer)], dtype=torch.float64)
    torch.testing.assert_close(vmf_log_normalizer(kappa64, 3), expected, rtol=1e-12, atol=0)
    # float32 keeps ~6 digits of the KL whatever kappa (kappa A and log C are each ~kappa, the KL is not), but
    # for kappa << 1, where the KL ~ kappa^2 / 6 comes out of two terms ~ kappa: there 1e-7 kappa
    kl32 = vmf_kl(kappa64.float(), 3).double()
    torch.testing.assert_close(kl32, vmf_kl(kappa64, 3), rtol=2e-6, atol=1e-7 * kappa)


@pytest.mark.parametrize("dim, kappa", [(5, 4.0), (16, 30.0), (64, 200.0)])
def test_kl_matches_a_monte_carlo_estimate_and_the_density_integrates_to_one(dim, kappa) -> None:
    """KL = E_q[log q - log p] within 4 standard errors of 20k samples; E_q[p / q] = 1 (the normaliser)."""
    count = 20_000
    generator = torch.Generator().manual_seed(1)
    mu = F.normalize(torch.randn(dim, dtype=torch.float64, generator=generator), dim=0)
    kappa64 = torch.tensor(kappa, dtype=torch.float64)
    z = vmf_sample(mu.expand(count, dim), kappa64.expand(count), generator=generator)
    log_ratio = vmf_log_density(z, mu, kappa64) + log_sphere_area(dim)  # log q - log p
    standard_error = log_ratio.std().item() / math.sqrt(count)
    assert abs(log_ratio.mean().item() - vmf_kl(kappa64, dim).item()) < 4 * standard_error
    if dim == 5:  # p / q has a finite variance for small kappa only
        weights = (-log_ratio).exp()
        assert abs(weights.mean().item() - 1) < 4 * weights.std().item() / math.sqrt(count)


def test_kl_vanishes_as_kappa_to_zero_like_kappa_squared_over_2d() -> None:
    kappa = torch.tensor([1e-3, 1e-2], dtype=torch.float64)
    for dim in (2, 3, 10):
        torch.testing.assert_close(vmf_kl(kappa, dim), kappa.square() / (2 * dim), rtol=1e-3, atol=0)
    assert (vmf_kl(torch.logspace(-3, 4, 50), 8) > 0).all()


# --- the model ---


def test_svae_loss_is_reconstruction_plus_beta_kl_of_the_encoded_vmf() -> None:
    """mu = the first D outputs normalised, kappa = softplus(last) + 1, z a vMF draw, KL in closed form."""
    model = make(SVAE, {"beta": 0.5}, likelihood="bernoulli").eval()
    batch = fixed_batch(count=4)
    torch.manual_seed(7)
    terms = model.loss_terms(batch)
    out = model.encoder(batch.inputs)
    mu, kappa = F.normalize(out[:, :8], dim=1), F.softplus(out[:, 8]) + 1
    torch.manual_seed(7)
    z = vmf_sample(mu, kappa)
    recon = F.binary_cross_entropy_with_logits(model.decoder(z), batch.inputs, reduction="none").sum(
        (1, 2, 3)
    )
    torch.testing.assert_close(terms["kappa"], kappa)
    torch.testing.assert_close(terms["kl"], vmf_kl(kappa, 8))
    torch.testing.assert_close(terms["recon"], recon)
    torch.testing.assert_close(terms["loss"], recon + 0.5 * terms["kl"])
    assert set(terms) == {"loss", "recon", "kl", "kappa"}


@pytest.mark.parametrize("step, weight", [(0, 0.0), (50, 1.0), (100, 2.0), (1000, 2.0)])
def test_svae_kl_warmup_rises_linearly_to_beta_in_training_only(step, weight) -> None:
    model = make(SVAE, {"beta": 2.0, "kl_warmup_steps": 100})
    model.step = step
    assert model.kl_weight() == pytest.approx(weight)
    assert model.training_metrics() == {"kl_weight": pytest.approx(weight)}
    batch = fixed_batch(count=3)
    train = model.train().loss_terms(batch)
    torch.testing.assert_close(train["loss"], train["recon"] + weight * train["kl"])
    val = model.eval().loss_terms(batch)
    torch.testing.assert_close(val["loss"], val["recon"] + 2.0 * val["kl"])


def test_svae_code_is_the_mean_direction_and_reconstructions_decode_it() -> None:
    model = make(SVAE, {}).eval()
    batch = fixed_batch(count=3)
    code = model.code(batch.inputs)
    torch.testing.assert_close(code, F.normalize(model.encoder(batch.inputs)[:, :8], dim=1))
    torch.testing.assert_close(code.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(model.latent(batch), code)
    torch.testing.assert_close(model.reconstruct(batch), model.decode(code))


def test_svae_samples_decode_uniform_points_on_the_sphere_repeatably() -> None:
    model = make(SVAE, {})
    first = model.sample(5, generator=torch.Generator().manual_seed(3))
    points = F.normalize(torch.randn(5, 8, generator=torch.Generator().manual_seed(3)), dim=1)
    torch.testing.assert_close(first, model.decode(points))
    assert first.shape == (5, 1, 28, 28) and not torch.equal(first, model.sample(5))


def test_svae_anomaly_score_is_a_deterministic_negative_elbo() -> None:
    """The mean of recon + KL over 300 random draws, to 2%; the same every time and whatever the batch."""
    model = make(SVAE, {"beta": 3.0}).eval()  # the score ignores beta: it is the ELBO
    batch = fixed_batch(count=4)
    score = model.anomaly_score(batch)
    torch.manual_seed(0)
    terms = [model.loss_terms(batch) for _ in range(300)]
    torch.testing.assert_close(
        score, torch.stack([t["recon"] + t["kl"] for t in terms]).mean(0), rtol=0.02, atol=0
    )
    torch.testing.assert_close(model.anomaly_score(batch), score)
    torch.testing.assert_close(model.anomaly_score(batch.with_inputs(batch.inputs[:1])), score[:1])


def test_svae_nll_is_the_reconstruction_when_the_decoder_ignores_the_code() -> None:
    """p(x | z) = p(x) for every z: the importance-sampled -log p(x) (vMF proposal, uniform prior) is the
    reconstruction term itself, up to the sampling error of E_q[p / q] = 1 (measured: < 0.005 nats)."""
    model = make(SVAE, {}, likelihood="bernoulli").eval()
    with torch.no_grad():
        model.decoder.net[0].weight.zero_()
    batch = fixed_batch(count=3)
    torch.manual_seed(0)
    nll = model.negative_log_likelihood(batch, 2000, chunk_size=300)
    torch.testing.assert_close(nll, model.loss_terms(batch)["recon"], rtol=0, atol=0.02)
    assert model.reports_likelihood()
    assert not make(SVAE, {"nll_samples": 0}, likelihood="bernoulli").reports_likelihood()
    assert not make(SVAE, {}).reports_likelihood()  # gaussian: known up to a constant


def test_svae_waits_for_no_device(monkeypatch) -> None:
    """Training, evaluation, scoring and the NLL draw and pick the proposals on the device."""
    model = make(SVAE, {}, likelihood="bernoulli")
    assert_model_waits_for_nothing(monkeypatch, model, fixed_batch(count=4), 40)


def test_svae_exported_graphs_trace_to_the_same_numbers() -> None:
    """The encoder, decoder and scorer graphs of the export, traced (the vMF draw of the score included)."""
    from ae_lightning.export.graphs import graphs

    model = make(SVAE, {}, backbone="conv", hidden_dims=[8, 16]).eval()
    pixels = (fixed_batch(count=3).inputs * 255).to(torch.uint8)
    inputs = {"encoder": pixels, "decoder": model.code(pixels / 255), "scorer": pixels}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deprecation of TorchScript
        for name, graph in graphs(model, threshold=None).items():
            traced = torch.jit.trace(graph.module, graph.inputs, check_trace=False)
            torch.testing.assert_close(traced(inputs[name]), graph.module(inputs[name]))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"latent_dim": 1}, "SVAE needs latent_dim >= 2"),
        ({"latent_dim": 0}, "latent_dim must be a positive"),
        ({"beta": -1.0}, "beta must be >= 0"),
        ({"kl_warmup_steps": -1}, "kl_warmup_steps must be >= 0"),
        ({"nll_samples": -1}, "nll_samples must be >= 0"),
    ],
)
def test_svae_refuses_bad_arguments(kwargs, message) -> None:
    with pytest.raises(ConfigError, match=message):
        SVAE(**kwargs)
