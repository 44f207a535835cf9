"""PoincareVAE: the ball's maps, the two normals, the normaliser and the sampler against theory; the model."""

import math
import warnings

import mpmath
import pytest
import torch
import torch.nn.functional as F

from ae_lightning.autoencoders import hyperbolic as hb
from ae_lightning.autoencoders.poincare_vae import PoincareVAE
from ae_lightning.autoencoders.svae import log_sphere_area
from ae_lightning.errors import ConfigError
from ae_lightning.export.graphs import graphs
from tests.syncs import assert_model_waits_for_nothing
from tests.test_autoencoders import fixed_batch, make

F64, close = torch.float64, torch.testing.assert_close
POSTERIORS = pytest.mark.parametrize("posterior", ["wrapped", "riemannian"])


def ball_points(count: int, dim: int, c: float, seed: int) -> torch.Tensor:
    """Points of the ball of curvature -c, up to ~5 / sqrt(c) from the origin, float64."""
    normal = torch.randn(count, dim, dtype=F64, generator=torch.Generator().manual_seed(seed))
    return hb.exp_map0(0.6 * normal, c)


def radius_density(dim: int, sigma: float, c: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Radii and the Riemannian normal's radius density there, exp(-r^2/2s^2) sinh(sqrt(c) r)^(D-1) / norm."""
    n, a = dim - 1, math.sqrt(c)
    r = torch.linspace(1e-12, max(sigma * math.sqrt(n), n * a * sigma**2) + 14 * sigma, 100_001, dtype=F64)
    log_f = -(r**2) / (2 * sigma**2) + (n * hb.log_sinh(a * r) if n else 0.0)
    density = (log_f - log_f.max()).exp()
    return r, density / torch.trapezoid(density, r)


def radius_moment(dim: int, sigma: float, c: float, power: int) -> float:
    """E[r^power] of the Riemannian normal's radius r = d(mu, z), by quadrature."""
    r, density = radius_density(dim, sigma, c)
    return torch.trapezoid(density * r**power, r).item()


@pytest.mark.parametrize("c", [0.3, 1.0, 2.5])
def test_mobius_addition_maps_distance_and_transport_satisfy_their_identities(c) -> None:
    x, y, zero = ball_points(64, 4, c, 0), ball_points(64, 4, c, 1), torch.zeros(64, 4, dtype=F64)
    close(hb.mobius_add(zero, x, c), x), close(hb.mobius_add(x, zero, c), x)
    close(hb.mobius_add(-x, x, c), zero, atol=1e-12, rtol=0)
    close(hb.mobius_add(-x, hb.mobius_add(x, y, c), c), y, atol=1e-9, rtol=1e-9)  # left cancellation
    assert (hb.mobius_add(x, y, c).norm(dim=1) < 1 / math.sqrt(c)).all()
    a, b = torch.tensor([[0.3]], dtype=F64), torch.tensor([[-0.55]], dtype=F64)  # 1D: (a + b) / (1 + c a b)
    close(hb.mobius_add(a / math.sqrt(c), b / math.sqrt(c), c), (a + b) / (1 + a * b) / math.sqrt(c))
    close(hb.exp_map(x, hb.log_map(x, y, c), c), y, atol=1e-9, rtol=1e-9)
    v = torch.randn(64, 4, dtype=F64, generator=torch.Generator().manual_seed(4)) / hb.conformal_factor(x, c)
    close(hb.log_map(x, hb.exp_map(x, v, c), c), v, atol=1e-9, rtol=1e-9)
    riemannian_norm = hb.conformal_factor(x, c)[:, 0] * v.norm(dim=1)
    close(hb.distance(x, hb.exp_map(x, v, c), c), riemannian_norm, atol=1e-9, rtol=1e-9)
    close(hb.distance(zero, y, c), 2 * torch.atanh(math.sqrt(c) * y.norm(dim=1)) / math.sqrt(c))
    close(hb.exp_map(zero, v, c), hb.exp_map0(v, c)), close(hb.log_map0(hb.exp_map0(v, c), c), v)
    moved = hb.transport_from_origin(x, v, c)  # keeps the Riemannian norm (lambda_0 = 2)
    close(hb.conformal_factor(x, c)[:, 0] * moved.norm(dim=1), 2 * v.norm(dim=1))
    close(hb.wrap(x, v, c), hb.exp_map(x, hb.transport_from_origin(x, v / 2, c), c))
    close(hb.transport_to_origin(x, moved, c), v), close(hb.unwrap(x, hb.wrap(x, v, c), c), v)
    far = torch.tensor([[60.0, 0, 0], [0, 0, 0], [1e-20, 0, 0], [3, -4, 1]], requires_grad=True)  # float32
    z = hb.exp_map0(far, c)
    d = hb.distance(z, z.flip(0), c)  # the norms are clamped at (1 - 1e-5) / sqrt(c): 12.2 / sqrt(c) out
    (grad,) = torch.autograd.grad(hb.log_map0(z, c).sum() + d.sum() + hb.wrap(z, far, c).sum(), far)
    assert (z.norm(dim=1) <= (1 - 1e-5) / math.sqrt(c) * (1 + 1e-7)).all() and d[0] > 8 / math.sqrt(c)
    assert torch.isfinite(d).all() and torch.isfinite(grad).all()
    close(torch.func.jacrev(lambda u: hb.exp_map0(u, c))(torch.zeros(3)), torch.eye(3))


def test_densities_integrate_to_one_and_the_wrapped_one_is_the_hand_computation() -> None:
    """D = 2, c = 0.8: the sums of q lambda_z^2 (the Riemannian volume) on a 1400^2 grid are 1 to 2e-4."""
    c, size = 0.8, 1400
    h = 2 / math.sqrt(c) / size
    axis = torch.linspace(-1 / math.sqrt(c) + h / 2, 1 / math.sqrt(c) - h / 2, size, dtype=F64)
    z = torch.cartesian_prod(axis, axis)
    z = z[z.norm(dim=1) < 1 / math.sqrt(c) - 1e-9]
    volume, mu = hb.conformal_factor(z, c)[:, 0] ** 2 * h**2, torch.tensor([0.35, -0.2], dtype=F64)
    wrapped = hb.wrapped_normal_log_density(z, mu, torch.tensor([0.5, 0.8], dtype=F64), c).exp()
    riemannian = hb.riemannian_normal_log_density(z, mu, torch.tensor(0.6, dtype=F64), c).exp()
    for density in (wrapped, riemannian):
        assert abs((density * volume).sum().item() - 1) < 2e-4
    # D = 3: log q = sum log N(sigma eps; 0, sigma^2) - (D-1) log(sinh(sqrt(c) d) / sqrt(c) d), d = |u|,
    # u = sigma eps; and E_q[p / q] = 1 for another wrapped normal p, within 4 standard errors of 40k draws
    c, generator = 1.3, torch.Generator().manual_seed(5)
    mu, sigma = ball_points(1, 3, c, 6)[0] / 4, torch.tensor([0.6, 0.9, 1.3], dtype=F64)
    eps = torch.randn(40_000, 3, dtype=F64, generator=generator)
    z, u = hb.wrapped_normal_sample(mu, sigma, eps, c), sigma * eps
    close(hb.distance(mu, z, c), u.norm(dim=1)), close(hb.unwrap(mu, z, c), u)
    hand = (-0.5 * math.log(2 * math.pi) - sigma.log() - eps**2 / 2).sum(1)
    hand -= 2 * (torch.sinh(math.sqrt(c) * u.norm(dim=1)) / (math.sqrt(c) * u.norm(dim=1))).log()
    close(hb.wrapped_normal_log_density(z, mu, sigma, c), hand)
    weights = (hb.wrapped_normal_log_density(z, torch.zeros(3, dtype=F64), 0.7, c) - hand).exp()
    assert abs(weights.mean().item() - 1) < 4 * weights.std().item() / math.sqrt(len(weights))


@pytest.mark.parametrize("dim, c", [(2, 0.5), (2, 2.0), (3, 1.0), (8, 1.0), (33, 0.5), (64, 2.0)])
def test_riemannian_normaliser_against_mpmath_and_its_slope_the_mean_square_radius(dim, c) -> None:
    """log Z vs the paper's closed form in 300 digits (float64 1e-13, float32 2e-6) for sqrt(c) s in [1e-3 (it
    cancels: the series), 20]; D <= 3: vs log area(S^{D-1}) int_0^inf e^{-r^2/2s^2} (sinh(sqrt(c) r) /
    sqrt(c))^{D-1} dr (mpmath.quad) to 1e-10; d log Z / ds = E[d^2] / s^3 to 1e-6; gradcheck at the switch."""
    n, a, sigmas = dim - 1, math.sqrt(c), torch.logspace(-3, 1.3, 9, dtype=F64) / math.sqrt(c)
    expected = []
    for s in sigmas.tolist():
        with mpmath.workdps(300):  # the sum cancels to 1e-145 (D = 64, sqrt(c) s = 1e-3)
            x = [(n - 2 * k) * mpmath.sqrt(c / 2) * s for k in range(n + 1)]  # minus erfc's arguments
            terms = [mpmath.binomial(n, k) * mpmath.exp(x[k] ** 2) * mpmath.erfc(-x[k]) for k in range(n + 1)]
            total = mpmath.fsum((-1) ** k * term for k, term in enumerate(terms)) * mpmath.sqrt(mpmath.pi / 2)
            expected.append(float(mpmath.log(total * s / (2 * a) ** n)))
        if dim <= 3:
            f = lambda r, s=s: mpmath.exp(-(r**2) / (2 * s**2)) * (mpmath.sinh(a * r) / a) ** n  # noqa: E731
            top = n * a * s**2 + s
            integral = mpmath.quad(f, [0, top / 2, top, top + 10 * s, top + 40 * s])
            assert float(mpmath.log(integral)) == pytest.approx(expected[-1], rel=1e-10, abs=1e-12)
    expected = torch.tensor(expected, dtype=F64) + log_sphere_area(dim)
    ours = hb.riemannian_log_normalizer(leaf := sigmas.clone().requires_grad_(), dim, c)
    ours32 = hb.riemannian_log_normalizer(sigmas.float(), dim, c).double()
    for value, tolerance in ((ours, 1e-13), (ours32, 2e-6)):
        assert ((value.detach() - expected).abs() / expected.abs().clamp_min(1)).max() < tolerance
    mean_squares = torch.tensor([radius_moment(dim, s, c, 2) for s in sigmas.tolist()], dtype=F64)
    close(torch.autograd.grad(ours.sum(), leaf)[0], mean_squares / sigmas**3, rtol=1e-6, atol=0)
    sigmas = torch.tensor([0.01, 0.1, 0.26, 0.3, 2.0], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s: hb.riemannian_log_normalizer(s, dim, c), (sigmas,))


SAMPLER_CASES = [(1, 0.7, 1.0, 0.01), (2, 0.01, 1.0, 0.01), (2, 0.3, 1.0, 0.03), (3, 0.5, 1.0, 0.05)]
SAMPLER_CASES += [(3, 1.0, 1.0, 0.06), (3, 2.0, 0.5, 0.03), (8, 1.0, 1.0, 0.01)]


@pytest.mark.parametrize("dim, sigma, c, bound", SAMPLER_CASES)
def test_riemannian_draws_have_the_radius_distribution_and_its_gradient(dim, sigma, c, bound) -> None:
    """40k draws: >= 64% of proposals accepted (32 all fail with probability < 0.36^32 ~ 6e-15); E[d], E[d^2],
    P(d < median) within 4 standard errors of quadrature; directions average to 0; d/ds E[d^2] by g_rep (the
    acceptance's dependence on s left out) is the quadrature's within `bound` + 4 standard errors (100k draws:
    -1.1%, -2.4%, +3.6%, +0.1% at (D, s) = (2, .3), (3, .5), (3, 1), (8, 1); 0 as sqrt(c) s -> 0 or grows)."""
    count, mu = 40_000, ball_points(1, dim, c, 7)[0]
    noise = hb.riemannian_noise((count,), dim, generator=torch.Generator().manual_seed(dim))
    sigmas = torch.full((count,), sigma, dtype=F64, requires_grad=True)
    accepted = noise.uniform.log() <= hb.radius_proposals(sigmas.detach(), dim, c, noise.normal.double())[1]
    assert accepted.double().mean() > 0.64  # seen: 0.65 for D = 2 and s -> 0
    z = hb.riemannian_normal_sample(mu, sigmas, noise, c)
    d = hb.distance(mu, z, c)
    (slope,) = torch.autograd.grad(d.square().sum(), sigmas)
    for value, expected in ((d, radius_moment(dim, sigma, c, 1)), (d**2, radius_moment(dim, sigma, c, 2))):
        assert abs(value.mean().item() - expected) < 4 * value.std().item() / math.sqrt(count)
    r, density = radius_density(dim, sigma, c)
    median = r[1:][torch.searchsorted(torch.cumulative_trapezoid(density, r), 0.5)]
    assert abs((d < median).double().mean().item() - 0.5) < 4 * 0.5 / math.sqrt(count)
    assert F.normalize(hb.unwrap(mu, z, c), dim=1).mean(0).norm() < 4 / math.sqrt(count)
    step = 1e-4 * sigma
    exact = (radius_moment(dim, sigma + step, c, 2) - radius_moment(dim, sigma - step, c, 2)) / (2 * step)
    assert abs(slope.mean().item() - exact) < bound * exact + 4 * slope.std().item() / math.sqrt(count)


@POSTERIORS
def test_kl_estimate_is_zero_when_q_is_p_positive_on_average_and_exact_at_the_origin(posterior) -> None:
    """q = p: log q - log p = 0 at every draw. Else the mean of 20k one-draw estimates is > 0; for q at the
    origin with scale 0.6 s_p, the exact KL within 4 standard errors (wrapped: the tangent Gaussians' KL;
    Riemannian: log Z_p - log Z_q + E_q[d^2] (1/2s_p^2 - 1/2s_q^2), E_q[d^2] = s_q^3 d log Z / ds at s_q)."""
    count, dim = 20_000, 3
    model = PoincareVAE(posterior=posterior, latent_dim=dim, hidden_dims=[8], prior_std=0.8).double()
    origin = torch.zeros(count, dim, dtype=F64)
    draws = model.prior_sample(count, torch.Generator().manual_seed(0))
    sigma_p = torch.full((count, dim) if posterior == "wrapped" else (count,), 0.8, dtype=F64)
    close(model.log_posterior(draws, origin, sigma_p) - model.log_prior(draws), 0 * draws[:, 0])
    if posterior == "wrapped":
        exact = dim * (math.log(1 / 0.6) + 0.6**2 / 2 - 0.5)
    else:
        s_q = torch.tensor(0.48, dtype=F64, requires_grad=True)
        log_z_q = hb.riemannian_log_normalizer(s_q, dim, 1.0)
        mean_square = 0.48**3 * torch.autograd.grad(log_z_q, s_q)[0].item()
        exact = model.prior_log_normalizer - log_z_q.item() + mean_square * (1 / 1.28 - 1 / (2 * 0.48**2))
    torch.manual_seed(1)
    for mu in (ball_points(1, dim, 1.0, 9).expand(count, dim), origin):
        z = model.posterior_sample(mu, 0.6 * sigma_p, model.posterior_noise((count,)))
        kl = (model.log_posterior(z, mu, 0.6 * sigma_p) - model.log_prior(z)).detach()
        assert kl.mean() > 4 * kl.std() / math.sqrt(count)  # seen: 6.8, 5.6 away from the origin
    assert abs(kl.mean().item() - exact) < 4 * kl.std().item() / math.sqrt(count)


@POSTERIORS
def test_loss_is_reconstruction_plus_beta_times_log_q_minus_log_p_at_the_draw(posterior) -> None:
    """mu = exp_0(first D outputs), sigma = softplus(the rest) + 1e-4, z drawn from that noise, the decoder
    fed log_0(z); the KL term is log q(z) - log p(z), written out for the wrapped normal. And the warm-up."""
    c, prior_std = 0.7, 0.9
    kwargs = {"beta": 0.5, "posterior": posterior, "curvature": c, "prior_std": prior_std}
    model, batch = make(PoincareVAE, kwargs, likelihood="bernoulli").eval(), fixed_batch(count=4)
    torch.manual_seed(7)
    terms = model.loss_terms(batch)
    out = model.encoder(batch.inputs)
    mu, sigma = hb.exp_map0(out[:, :8], c), F.softplus(out[:, 8:]) + 1e-4
    torch.manual_seed(7)
    if posterior == "wrapped":
        eps = torch.randn(4, 8)
        z = hb.mobius_add(mu, hb.exp_map0(sigma * eps / 2, c), c)
        u_prior, d = 2 * hb.log_map0(z, c), (sigma * eps).norm(dim=1)  # the prior's tangent coordinates
        log_jacobian = lambda r: 7 * (torch.sinh(math.sqrt(c) * r) / (math.sqrt(c) * r)).log()  # noqa: E731
        log_q = (-0.5 * math.log(2 * math.pi) - sigma.log() - eps**2 / 2).sum(1) - log_jacobian(d)
        log_p = (-0.5 * math.log(2 * math.pi * prior_std**2) - u_prior**2 / (2 * prior_std**2)).sum(1)
        log_p -= log_jacobian(u_prior.norm(dim=1))
    else:
        z = hb.riemannian_normal_sample(mu, sigma[:, 0], hb.riemannian_noise((4,), 8), c)
        log_q = hb.riemannian_normal_log_density(z, mu, sigma[:, 0], c)
        log_p = hb.riemannian_normal_log_density(z, torch.zeros(8), torch.tensor(prior_std), c)
    logits = model.decoder(hb.log_map0(z, c))
    recon = F.binary_cross_entropy_with_logits(logits, batch.inputs, reduction="none").sum((1, 2, 3))
    close(terms["recon"], recon), close(terms["kl"], log_q - log_p, rtol=1e-4, atol=1e-4)
    close(terms["loss"], terms["recon"] + 0.5 * terms["kl"])
    assert set(terms) == {"loss", "recon", "kl"}
    model.kl_warmup_steps, model.step = 100, 50  # training only: 0.5 * 50 / 100
    train = model.train().loss_terms(batch)
    close(train["loss"], train["recon"] + 0.25 * train["kl"])
    assert model.training_metrics() == {"kl_weight": 0.25}


@POSTERIORS
def test_code_is_mu_on_the_ball_decode_reads_log_0_and_samples_are_prior_draws(posterior) -> None:
    """decode(code(x)) is the reconstruction; samples decode prior draws (wrapped: exp_0(prior_std eps / 2))
    repeatably, whose mean radius is the prior's (quadrature) within 4 standard errors of 4000."""
    model = make(PoincareVAE, {"posterior": posterior, "curvature": 2.0, "prior_std": 0.5}).eval()
    batch = fixed_batch(count=3)
    code = model.code(batch.inputs)
    close(code, hb.exp_map0(model.encoder(batch.inputs)[:, :8], 2.0)), close(model.latent(batch), code)
    assert (code.norm(dim=1) < 1 / math.sqrt(2.0)).all()
    close(model.reconstruct(batch), model.decode(code))
    first = model.sample(5, generator=torch.Generator().manual_seed(3))
    assert first.shape == (5, 1, 28, 28) and not torch.equal(first, model.sample(5))
    close(model.sample(5, generator=torch.Generator().manual_seed(3)), first)
    if posterior == "wrapped":
        eps = torch.randn(5, 8, generator=torch.Generator().manual_seed(3))
        close(first, model.decode(hb.exp_map0(0.5 * eps / 2, 2.0)))
        expected = 0.5 * math.sqrt(2) * math.exp(math.lgamma(4.5) - math.lgamma(4))
    else:
        expected = radius_moment(8, 0.5, 2.0, 1)
    radius = 2 * hb.log_map0(model.prior_sample(4000, torch.Generator().manual_seed(4)), 2.0).norm(dim=1)
    assert abs(radius.mean().item() - expected) < 4 * radius.std().item() / math.sqrt(4000)


@POSTERIORS
def test_anomaly_score_is_a_deterministic_negative_elbo_and_the_nll_importance_samples(posterior) -> None:
    """The score is the mean of recon + log q - log p over 300 random draws to 2%, the same every time and
    whatever the batch. A decoder that ignores the code: -log p(x) = recon - log mean_i p(z_i) / q(z_i | x),
    and the 2000 weights p / q average to 1 within 4 standard errors (q near p: sigma ~ 0.69 ~ prior_std)."""
    model = make(PoincareVAE, {"posterior": posterior, "beta": 3.0, "prior_std": 0.7}, likelihood="bernoulli")
    batch = fixed_batch(count=4)
    score = model.eval().anomaly_score(batch)  # beta = 1: the ELBO
    torch.manual_seed(0)
    terms = [model.loss_terms(batch) for _ in range(300)]
    close(score, torch.stack([t["recon"] + t["kl"] for t in terms]).mean(0), rtol=0.02, atol=0)
    close(model.anomaly_score(batch.with_inputs(batch.inputs[:1])), score[:1])  # the same fixed draws
    with torch.no_grad():
        model.decoder.net[0].weight.zero_()
        model.encoder.net[-1].weight.mul_(0.1)
    recon = model.loss_terms(batch)["recon"]
    torch.manual_seed(0)
    nll = model.negative_log_likelihood(batch, 2000, chunk_size=300)
    torch.manual_seed(0)
    weights = (model.log_weights(batch, 2000, chunk_size=300) + recon).exp().detach()
    close(nll, recon - weights.mean(0).log())
    assert ((weights.mean(0) - 1).abs() < 4 * weights.std(0) / math.sqrt(2000)).all()
    assert model.reports_likelihood() and not make(PoincareVAE, {}).reports_likelihood()  # gaussian
    assert not make(PoincareVAE, {"nll_samples": 0}, likelihood="bernoulli").reports_likelihood()


@POSTERIORS
def test_waits_for_no_device_and_traces_to_the_same_numbers(posterior, monkeypatch) -> None:
    """No host syncs in training, evaluation, scoring or the NLL; the exported graphs trace to its numbers."""
    model, batch = make(PoincareVAE, {"posterior": posterior}, likelihood="bernoulli"), fixed_batch(count=4)
    assert_model_waits_for_nothing(monkeypatch, model, batch, 40)
    pixels = (batch.inputs * 255).to(torch.uint8)
    inputs = {"encoder": pixels, "decoder": model.code(pixels / 255), "scorer": pixels}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deprecation of TorchScript
        for name, graph in graphs(model, threshold=None).items():
            traced = torch.jit.trace(graph.module, graph.inputs, check_trace=False)
            close(traced(inputs[name]), graph.module(inputs[name]))


BAD_ARGUMENTS = [
    ({"posterior": "lorentz"}, "posterior must be 'wrapped' or 'riemannian', got 'lorentz'"),
    ({"curvature": 0.0}, "curvature must be a finite c > 0"),
    ({"prior_std": -1.0}, "prior_std must be finite and > 0"),
    ({"posterior": "riemannian", "latent_dim": 16}, "puts its draws about 15.0 from the origin, beyond"),
    ({"latent_dim": 200, "prior_std": 1.0}, "draws about 14.1 from the origin.*lower prior_std"),
]


@pytest.mark.parametrize("kwargs, message", BAD_ARGUMENTS)
def test_refuses_bad_arguments_in_one_line(kwargs, message) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        PoincareVAE(**kwargs)
    assert "\n" not in str(error.value)
