"""The Hamiltonian VAE: the tempered leapfrog flow (volume, reversibility, energy, tempering) and its ELBO
against hand computations."""

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from ae_lightning.autoencoders.hvae import (
    HVAE,
    PotentialGradient,
    tempered_leapfrog,
    tempering_log_det,
    tempering_schedule,
)
from ae_lightning.batch import Batch
from ae_lightning.errors import ConfigError
from tests.test_autoencoders import fixed_batch, make


def mlp_potential(z: Tensor) -> Tensor:
    """U(z) = sum_j w_j tanh(a_j . z + b_j) + |z|^2 / 2 for fixed random a, b, w (D = 3): (B, 3) -> (B,)."""
    generator = torch.Generator().manual_seed(5)
    a, b, w = (torch.randn(shape, generator=generator, dtype=z.dtype) for shape in ((3, 6), (6,), (6,)))
    return torch.tanh(z @ a + b) @ w + 0.5 * z.square().sum(1)


def autograd_gradient(potential: Callable[[Tensor], Tensor]) -> PotentialGradient:
    """The integrator's gradient callable for `potential`, differentiable (for Jacobians of the flow)."""

    def gradient(z: Tensor) -> tuple[Tensor, None]:
        with torch.enable_grad():
            z = z if z.requires_grad else z.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(potential(z).sum(), z, create_graph=True)
        return grad, None

    return gradient


def flow(state: Tensor, step_size: Tensor, scales: Tensor) -> Tensor:
    """(z, rho) of one point stacked, (6,) -> (z_K, rho_K), (6,), under the MLP potential."""
    z, rho, _ = tempered_leapfrog(
        state[None, :3], state[None, 3:], step_size, scales, autograd_gradient(mlp_potential)
    )
    return torch.cat([z[0], rho[0]])


STEP = torch.tensor([0.3, 0.2, 0.25], dtype=torch.float64)
START = torch.tensor([0.5, -1.0, 0.3, 1.2, 0.4, -0.7], dtype=torch.float64)


def test_leapfrog_preserves_volume() -> None:
    """log |det| of the autograd Jacobian of (z_0, rho_0) -> (z_K, rho_K), 4 steps untempered: 0."""
    jacobian = torch.autograd.functional.jacobian(lambda s: flow(s, STEP, torch.ones(4)), START)
    sign, log_det = torch.linalg.slogdet(jacobian)
    assert sign == 1 and abs(log_det.item()) < 1e-5
    assert (jacobian - torch.eye(6, dtype=torch.float64)).abs().max() > 0.1  # not trivially the identity


def test_leapfrog_is_time_reversible() -> None:
    """K steps, then K steps from (z_K, -rho_K), return to (z_0, -rho_0)."""
    end = flow(START, STEP, torch.ones(5))
    back = flow(torch.cat([end[:3], -end[3:]]), STEP, torch.ones(5))
    torch.testing.assert_close(back, torch.cat([START[:3], -START[3:]]), atol=1e-5, rtol=0)
    assert (end - START).abs().max() > 0.5  # it went somewhere


def test_leapfrog_nearly_conserves_the_hamiltonian_of_a_quadratic_potential() -> None:
    """U = z^T A z / 2, 100 steps of 0.01: H (1.59) changes by < 1e-4 (seen: 5e-5; the leapfrog's error is
    O(eps^2)), while the position moves by 0.65."""
    matrix = torch.tensor([[2.0, 0.5, 0.0], [0.5, 1.0, 0.3], [0.0, 0.3, 3.0]], dtype=torch.float64)

    def hamiltonian(z: Tensor, rho: Tensor) -> Tensor:
        return 0.5 * ((z @ matrix) * z).sum(1) + 0.5 * rho.square().sum(1)

    z0, rho0 = START[None, :3], START[None, 3:]
    z, rho, _ = tempered_leapfrog(z0, rho0, torch.tensor(0.01), torch.ones(100), lambda z: (z @ matrix, None))
    assert abs((hamiltonian(z, rho) - hamiltonian(z0, rho0)).item()) < 1e-4
    assert (z - z0).abs().max() > 0.5


def test_tempering_schedule_is_the_quadratic_scheme() -> None:
    """beta_0 = 0.25, K = 2: 1/sqrt(beta_1) = (1 - 2) / 4 + 2 = 1.75, so beta_1 = 1 / 1.75^2; beta_2 = 1."""
    betas = tempering_schedule(torch.tensor(0.25, dtype=torch.float64), 2)
    torch.testing.assert_close(betas, torch.tensor([0.25, 1 / 1.75**2, 1.0], dtype=torch.float64))
    betas = tempering_schedule(torch.tensor(0.3), 7)
    assert betas[0].item() == pytest.approx(0.3) and betas[-1].item() == pytest.approx(1.0, abs=1e-6)
    assert (betas.diff() > 0).all()
    assert torch.equal(tempering_schedule(torch.tensor(1.0), 3), torch.ones(4))  # beta_0 = 1: none


def test_tempered_flow_log_det_is_half_d_log_beta_zero() -> None:
    """The whole tempered flow (leapfrog + rescalings from the schedule): log |det J| = (3/2) log beta_0."""
    beta_zero = torch.tensor(0.3, dtype=torch.float64)
    betas = tempering_schedule(beta_zero, 4)
    scales = (betas[:-1] / betas[1:]).sqrt()
    jacobian = torch.autograd.functional.jacobian(lambda s: flow(s, STEP, scales), START)
    _, log_det = torch.linalg.slogdet(jacobian)
    assert log_det.item() == pytest.approx(1.5 * math.log(0.3), abs=1e-5)
    assert tempering_log_det(beta_zero, 3).item() == pytest.approx(1.5 * math.log(0.3), abs=1e-12)


def test_vanishing_steps_without_tempering_give_the_vae_elbo_on_the_same_draw() -> None:
    """eps = 1e-8, beta_0 = 1: z_K = z_0 and rho_K = rho_0, so the ELBO is -recon(z_0) + log N(z_0; 0, I) -
    log N(z_0; mu, sigma^2), written out here, on the same draw."""
    model = make(HVAE, {"eps_lf": 1e-8, "beta_zero": 1.0, "n_leapfrog": 3}, likelihood="bernoulli").eval()
    batch = fixed_batch(count=4)
    torch.manual_seed(3)
    terms = model.loss_terms(batch)
    torch.manual_seed(3)
    mu, logvar = model.encode(batch.inputs)
    noise = torch.randn_like(mu)
    z = mu + (0.5 * logvar).exp() * noise
    recon = model.reconstruction_loss(model.decoder(z), batch.inputs)
    log_prior = (-0.5 * math.log(2 * math.pi) - 0.5 * z.square()).sum(1)
    log_posterior = (-0.5 * math.log(2 * math.pi) - 0.5 * logvar - 0.5 * noise.square()).sum(1)
    expected = -recon + log_prior - log_posterior
    torch.testing.assert_close(terms["elbo"], expected, atol=1e-3, rtol=0)
    torch.testing.assert_close(terms["loss"], -expected, atol=1e-3, rtol=0)
    torch.testing.assert_close(terms["recon"], recon, atol=1e-3, rtol=0)
    torch.testing.assert_close(terms["kl"], (-0.5 * (1 + logvar - mu.square() - logvar.exp())).sum(1))


def tiny_hvae() -> tuple[HVAE, Tensor, float]:
    """An HVAE of 1 latent unit and 3 binary pixels (K = 3 tempered steps), an image x, and p(x) by
    quadrature over z."""
    hvae = {"n_leapfrog": 3, "eps_lf": 0.4, "beta_zero": 0.5}
    model = make(HVAE, hvae, latent_dim=1, hidden_dims=[8], image_shape=(3,), likelihood="bernoulli").eval()
    x = torch.tensor([[1.0, 0.0, 1.0]])
    grid = torch.linspace(-12, 12, 24001)[:, None]
    with torch.no_grad():
        log_joint = -model.reconstruction_loss(model.decoder(grid), x.expand(len(grid), -1)) - 0.5 * (
            grid[:, 0].square() + math.log(2 * math.pi)
        )
        likelihood = log_joint.exp().sum() * (grid[1, 0] - grid[0, 0])
    return model, x, likelihood.item()


def test_exp_elbo_is_an_unbiased_estimate_of_the_likelihood() -> None:
    """The flow's densities add up: E[exp(elbo)] = p(x), p(x) by quadrature over z; 100,000 draws agree
    within 1% (seen: 0.3%, standard error 0.14%). Without the (1/2) log beta_0 term the mean would be
    1/sqrt(0.5) = 1.41 times too large."""
    model, x, likelihood = tiny_hvae()
    torch.manual_seed(0)
    with torch.no_grad():
        elbo = model.loss_terms(Batch(x.expand(100_000, -1)))["elbo"]
    assert elbo.exp().mean().item() == pytest.approx(likelihood, rel=0.01)
    assert elbo.mean() < math.log(likelihood)  # and the ELBO is a lower bound


def test_the_nll_weighs_draws_of_the_flow() -> None:
    """negative_log_likelihood's proposal is the flow's (q_0 moved by the leapfrog steps): under inference
    mode, 50,000 draws in chunks reach -log p(x) by quadrature to 0.01 nats, and its log weights are the
    ELBO estimates of those draws."""
    model, x, likelihood = tiny_hvae()
    batch = Batch(x.expand(2, -1))
    torch.manual_seed(0)
    with torch.inference_mode():
        nll = model.negative_log_likelihood(batch, 50_000, chunk_size=7_000)
    torch.testing.assert_close(nll, torch.full((2,), -math.log(likelihood)), atol=0.01, rtol=0)
    torch.manual_seed(1)
    log_weights = model.log_weights(batch, 3, chunk_size=3)[0]
    torch.manual_seed(1)
    elbo = model.loss_terms(Batch(x.expand(6, -1)))["elbo"]
    torch.testing.assert_close(log_weights, elbo.view(3, 2))


def test_the_terms_are_the_same_in_training_evaluation_and_inference_mode() -> None:
    """Autograd is switched on locally: evaluation under inference mode gives the training values."""
    model = make(HVAE, {"eps_lf": 0.05, "learn_beta_zero": True}, likelihood="bernoulli")
    batch = fixed_batch(count=3)
    torch.manual_seed(0)
    train = model.train().loss_terms(batch)
    with torch.inference_mode():
        torch.manual_seed(0)
        val = model.eval().loss_terms(batch)
    for name in ("loss", "elbo", "recon", "kl"):
        torch.testing.assert_close(val[name], train[name].detach())


def test_step_sizes_and_beta_zero_are_learnt_only_when_asked() -> None:
    model = make(HVAE, {"eps_lf": 0.01, "beta_zero": 0.3, "learn_beta_zero": True})
    model.train().loss_terms(fixed_batch(count=3))["loss"].mean().backward()
    assert model.log_step_size.grad.abs().min() > 0 and model.beta_zero_logit.grad.abs() > 0
    assert model.initial_inverse_temperature().item() == pytest.approx(0.3)
    torch.testing.assert_close(model.step_size(), torch.full((8,), 0.01))
    fixed = make(HVAE, {"learn_eps": False})
    names = {name for name, _ in fixed.named_parameters()}
    assert "log_step_size" not in names and "beta_zero_logit" not in names
    assert {"log_step_size", "fixed_beta_zero"} <= set(fixed.state_dict())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_leapfrog": 0}, "n_leapfrog must be at least 1"),
        ({"eps_lf": 0.0}, "eps_lf must be > 0"),
        ({"eps_lf": -0.1}, "eps_lf must be > 0"),
        ({"beta_zero": 0.0}, r"beta_zero must lie in \(0, 1\]"),
        ({"beta_zero": 1.5}, r"beta_zero must lie in \(0, 1\]"),
        ({"beta_zero": 1.0, "learn_beta_zero": True}, "learn_beta_zero needs beta_zero < 1"),
        ({"beta": 2.0}, "HVAE has no KL weight"),
        ({"kl_warmup_steps": 10}, "HVAE has no KL weight"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message) -> None:
    with pytest.raises(ConfigError, match=message):
        HVAE(**kwargs)
