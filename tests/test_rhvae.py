"""The Riemannian Hamiltonian VAE: the learnt metric against the formula, its gradients against autograd, the
generalised leapfrog (the HVAE's leapfrog for G = I, energy, volume, reversibility) and the ELBO against hand
computations."""

import math

import pytest
import torch
from torch import Tensor

from ae_lightning.autoencoders.hvae import tempered_leapfrog, tempering_schedule
from ae_lightning.autoencoders.rhvae import RHVAE, generalized_leapfrog
from ae_lightning.autoencoders.rhvae_metric import (
    CentroidMetric,
    log_det_inverse,
    momentum_draw,
    momentum_log_density,
)
from ae_lightning.batch import Batch
from ae_lightning.errors import ConfigError
from tests.syncs import assert_model_waits_for_nothing
from tests.test_autoencoders import fixed_batch, make
from tests.test_hvae import autograd_gradient, mlp_potential

F64 = torch.float64
#: two centroids in D = 2 with their L factors, T = 1.5, lambda = 0.01
CENTROIDS = torch.tensor([[0.0, 0.0], [1.0, -1.0]], dtype=F64)
LOWER = torch.tensor([[[1.0, 0.0], [0.5, 2.0]], [[0.3, 0.0], [-1.0, 1.0]]], dtype=F64)
METRIC = CentroidMetric(CENTROIDS, LOWER @ LOWER.mT, temperature=1.5, regularization=0.01)


def test_the_inverse_metric_is_the_formula_and_symmetric_positive_definite() -> None:
    """G^{-1}(z) = sum_i L_i L_i^T exp(-|z - c_i|^2 / T^2) + lambda I at z = (0.5, 0.2), by hand."""
    w1, w2 = math.exp(-(0.25 + 0.04) / 2.25), math.exp(-(0.25 + 1.44) / 2.25)
    # L_1 L_1^T = [[1, 0.5], [0.5, 4.25]], L_2 L_2^T = [[0.09, -0.3], [-0.3, 2]]
    expected = torch.tensor(
        [[w1 + 0.09 * w2 + 0.01, 0.5 * w1 - 0.3 * w2], [0.5 * w1 - 0.3 * w2, 4.25 * w1 + 2 * w2 + 0.01]],
        dtype=F64,
    )
    torch.testing.assert_close(METRIC.inverse(torch.tensor([[0.5, 0.2]], dtype=F64))[0], expected)
    inverse = METRIC.inverse(3 * torch.randn(100, 2, dtype=F64, generator=torch.Generator().manual_seed(0)))
    torch.testing.assert_close(inverse, inverse.mT, rtol=0, atol=0)
    assert torch.linalg.eigvalsh(inverse).min() >= 0.01 - 1e-12  # lambda bounds it below, far away too


def test_the_metric_terms_are_autograds() -> None:
    """The written-out gradients of (1/2) log det G and (1/2) rho^T G^{-1} rho against autograd; log det
    G^{-1}, log N(rho; 0, G / beta) and the draw's covariance C^{-T} C^{-1} = G against torch.linalg."""
    generator = torch.Generator().manual_seed(1)
    z = torch.randn(5, 2, dtype=F64, generator=generator).requires_grad_(True)
    rho = torch.randn(5, 2, dtype=F64, generator=generator)
    half_log_det = -0.5 * torch.logdet(METRIC.inverse(z))
    quadratic = 0.5 * (rho[:, None] @ METRIC.inverse(z) @ rho[:, :, None])[:, 0, 0]
    (log_det_grad,) = torch.autograd.grad(half_log_det.sum(), z)
    (quadratic_grad,) = torch.autograd.grad(quadratic.sum(), z)
    at = METRIC.at(z.detach())
    torch.testing.assert_close(METRIC.log_det_gradient(z.detach(), at), log_det_grad)
    torch.testing.assert_close(METRIC.quadratic_gradient(z.detach(), at.weights, rho), quadratic_grad)
    assert log_det_grad.abs().min() > 1e-3 and quadratic_grad.abs().min() > 1e-3  # not trivially zero
    torch.testing.assert_close(log_det_inverse(at), torch.logdet(at.inverse))
    metric = torch.linalg.inv(at.inverse)
    normal = torch.distributions.MultivariateNormal(torch.zeros(2, dtype=F64), metric / 0.3)
    torch.testing.assert_close(momentum_log_density(rho, at, 0.3), normal.log_prob(rho))
    draw = torch.stack([momentum_draw(e.expand(5, 2), at, torch.tensor(1.0)) for e in torch.eye(2)], -1)
    torch.testing.assert_close(draw @ draw.mT, metric)  # rho = R gamma with R R^T = G


def test_with_the_identity_metric_it_is_the_hvae_leapfrog() -> None:
    """Zero matrices and lambda = 1 give G = I: the same (z_K, rho_K) as `tempered_leapfrog` from the same
    start (5 tempered steps of 0.2 under an MLP potential, D = 3)."""
    identity = CentroidMetric(torch.zeros(1, 3, dtype=F64), torch.zeros(1, 3, 3, dtype=F64), 1.0, 1.0)
    generator = torch.Generator().manual_seed(2)
    z0, rho0 = (torch.randn(4, 3, dtype=F64, generator=generator) for _ in range(2))
    betas = tempering_schedule(torch.tensor(0.5, dtype=F64), 5)
    scales, step = (betas[:-1] / betas[1:]).sqrt(), torch.tensor(0.2, dtype=F64)
    gradient = autograd_gradient(mlp_potential)
    z, rho, _, _ = generalized_leapfrog(z0, rho0, step, scales, gradient, identity, 3)
    z_hvae, rho_hvae, _ = tempered_leapfrog(z0, rho0, step, scales, gradient)
    torch.testing.assert_close(z, z_hvae, rtol=0, atol=1e-12)
    torch.testing.assert_close(rho, rho_hvae, rtol=0, atol=1e-12)
    assert (z - z0).abs().max() > 0.3


def quadratic_potential(z: Tensor) -> tuple[Tensor, None]:
    """dU/dz of U = z^T A z / 2 (D = 2)."""
    return z @ torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=z.dtype), None


def hamiltonian(z: Tensor, rho: Tensor) -> Tensor:
    """U(z) + (1/2) log det G(z) + (1/2) rho^T G^{-1}(z) rho under METRIC and the quadratic U: (B,)."""
    inverse = METRIC.inverse(z)
    kinetic = 0.5 * (rho[:, None] @ inverse @ rho[:, :, None])[:, 0, 0]
    return 0.5 * (quadratic_potential(z)[0] * z).sum(1) - 0.5 * torch.logdet(inverse) + kinetic


START = torch.tensor([[0.4, -0.3, 1.5, -0.8]], dtype=F64)  # (z, rho)


def test_the_riemannian_hamiltonian_is_nearly_conserved() -> None:
    """200 untempered steps of 0.01 under METRIC with 3 fixed-point iterations: H (1.80) changes by < 1e-4
    (seen: 4.8e-5; the error is O(eps^2)) while z moves by 1.3; 20 steps of 0.1: ~100 times more (seen:
    4.6e-3); one fixed-point iteration (explicit, not symplectic): 2.4e-2."""
    z0, rho0 = START[:, :2], START[:, 2:]
    changes = []
    for step, count, iterations in ((0.01, 200, 3), (0.1, 20, 3), (0.01, 200, 1)):
        z, rho, _, _ = generalized_leapfrog(
            z0, rho0, torch.tensor(step), torch.ones(count), quadratic_potential, METRIC, iterations
        )
        changes.append((hamiltonian(z, rho) - hamiltonian(z0, rho0)).abs().item())
        assert (z - z0).abs().max() > 1
    assert changes[0] < 1e-4 and changes[1] > 50 * changes[0] and changes[2] > 100 * changes[0]


def riemannian_flow(state: Tensor, scales: Tensor) -> Tensor:
    """(z, rho) of one point, (4,) -> (z_K, rho_K) after len(scales) steps of 0.1, fixed points converged."""
    z, rho, _, _ = generalized_leapfrog(
        state[None, :2], state[None, 2:], torch.tensor(0.1), scales, quadratic_potential, METRIC, 30
    )
    return torch.cat([z[0], rho[0]])


def test_the_generalised_leapfrog_preserves_volume_and_is_time_reversible() -> None:
    """log |det J| of 5 steps is 0 (and (D/2) log beta_0 with tempering); 5 steps from (z_K, -rho_K) return
    to (z_0, -rho_0)."""
    state = START[0]
    jacobian = torch.autograd.functional.jacobian(lambda s: riemannian_flow(s, torch.ones(5)), state)
    assert abs(torch.linalg.slogdet(jacobian)[1].item()) < 1e-8
    assert (jacobian - torch.eye(4, dtype=F64)).abs().max() > 0.1
    betas = tempering_schedule(torch.tensor(0.4, dtype=F64), 5)
    scales = (betas[:-1] / betas[1:]).sqrt()
    jacobian = torch.autograd.functional.jacobian(lambda s: riemannian_flow(s, scales), state)
    assert torch.linalg.slogdet(jacobian)[1].item() == pytest.approx(math.log(0.4), abs=1e-8)
    end = riemannian_flow(state, torch.ones(5))
    back = riemannian_flow(torch.cat([end[:2], -end[2:]]), torch.ones(5))
    torch.testing.assert_close(back, torch.cat([state[:2], -state[2:]]), rtol=0, atol=1e-10)


def test_vanishing_steps_without_tempering_give_the_hand_computed_elbo() -> None:
    """eps = 1e-8, beta_0 = 1, training mode (the batch's metric: centroids mu, L from the metric network):
    z_K = z_0 and rho_K = rho_0 = C^{-T} gamma, so the ELBO is -recon(z_0) + log N(z_0; 0, I)
    + log N(rho_0; 0, G(z_0)) - log q_0(z_0) + (1/2) log det G(z_0) - log N(gamma; 0, I), written out here on
    the same draws; the log det G terms cancel, leaving the VAE's."""
    settings = {"eps_lf": 1e-8, "beta_zero": 1.0, "metric_hidden_dims": [16]}
    model = make(RHVAE, settings, likelihood="bernoulli")
    batch = fixed_batch(count=4)
    torch.manual_seed(3)
    terms = model.train().loss_terms(batch)
    torch.manual_seed(3)
    with torch.no_grad():
        mu, logvar = model.encode(batch.inputs)
        noise = torch.randn_like(mu)
        z = mu + (0.5 * logvar).exp() * noise
        gamma = torch.randn_like(mu)
        lower = model.metric_network(batch.inputs)
        weights = torch.exp(-(z[:, None] - mu[None]).square().sum(-1) / 1.5**2)  # (B, centroids)
        inverse = torch.einsum("bn,nij->bij", weights, lower @ lower.mT) + 0.01 * torch.eye(8)
        rho = torch.linalg.solve(torch.linalg.cholesky(inverse).mT, gamma[:, :, None])[:, :, 0]
        recon = model.reconstruction_loss(model.decoder(z), batch.inputs)
        log_2pi = math.log(2 * math.pi)
        log_prior = (-0.5 * log_2pi - 0.5 * z.square()).sum(1)
        log_posterior = (-0.5 * log_2pi - 0.5 * logvar - 0.5 * noise.square()).sum(1)
        half_log_det = -0.5 * torch.logdet(inverse)  # (1/2) log det G(z_0)
        quadratic = (rho[:, None] @ inverse @ rho[:, :, None])[:, 0, 0]
        log_momentum_end = -4 * log_2pi - half_log_det - 0.5 * quadratic  # log N(rho_0; 0, G(z_0))
        log_gamma = (-0.5 * log_2pi - 0.5 * gamma.square()).sum(1)
        expected = -recon + log_prior + log_momentum_end - log_posterior + half_log_det - log_gamma
    torch.testing.assert_close(terms["elbo"], expected, atol=1e-3, rtol=0)
    torch.testing.assert_close(terms["elbo"], -recon + log_prior - log_posterior, atol=1e-3, rtol=0)
    torch.testing.assert_close(terms["loss"], -expected, atol=1e-3, rtol=0)
    torch.testing.assert_close(terms["recon"], recon, atol=1e-3, rtol=0)
    torch.testing.assert_close(terms["kl"], (-0.5 * (1 + logvar - mu.square() - logvar.exp())).sum(1))
    assert half_log_det.abs().min() > 1  # the metric is far from I: its terms matter


def test_exp_elbo_is_an_unbiased_estimate_of_the_likelihood() -> None:
    """The flow's densities add up, the (1/2) log det G terms and the tempering's included: E[exp(elbo)] is
    p(x) (by quadrature over z) with 1 latent unit, 3 binary pixels, K = 3 tempered steps of 0.1 and a metric
    of two centroids set in the evaluation ring: 100,000 draws agree within 0.5% (seen: 0.06%, standard error
    0.11%). The log det G terms' signs flipped give 4.4% too much, rho_0's density without beta_0 2.1 times.
    (With steps of 0.3 the fixed points diverge for 0.2% of the draws.)"""
    settings = {"n_lf": 3, "eps_lf": 0.1, "beta_zero": 0.5, "n_lf_fixed_point": 8, "num_centroids": 2}
    settings |= {"temperature": 1.0, "regularization": 0.2, "metric_hidden_dims": [4]}
    settings |= {"latent_dim": 1, "hidden_dims": [8], "image_shape": (3,), "likelihood": "bernoulli"}
    model = make(RHVAE, settings).eval()
    model.metric_centroids.copy_(torch.tensor([[-0.5], [1.0]]))
    model.metric_matrices.copy_(torch.tensor([[[3.0]], [[0.5]]]))
    model.metric_filled.fill_(2), model.metric_batch_size.fill_(2)  # as after a training batch of 2
    x = torch.tensor([[1.0, 0.0, 1.0]])
    grid = torch.linspace(-12, 12, 24001)[:, None]
    with torch.no_grad():
        log_prior = -0.5 * (grid[:, 0].square() + math.log(2 * math.pi))
        log_joint = -model.reconstruction_loss(model.decoder(grid), x.expand(len(grid), -1)) + log_prior
        likelihood = log_joint.exp().sum() * (grid[1, 0] - grid[0, 0])
        torch.manual_seed(0)
        elbo = model.loss_terms(Batch(x.expand(100_000, -1)))["elbo"]
    assert elbo.exp().mean().item() == pytest.approx(likelihood.item(), rel=0.005)
    assert elbo.mean() < likelihood.log()  # and the ELBO is a lower bound


def ring_counters(model: RHVAE) -> list[int]:
    """The ring's cursor, slots written and last batch size."""
    return [model.metric_cursor.item(), model.metric_filled.item(), model.metric_batch_size.item()]


def test_training_fills_the_ring_that_evaluation_uses_and_a_checkpoint_keeps() -> None:
    """The metric network's L is lower triangular with an exp diagonal. Each training pass writes its batch's
    (mu, L L^T) at the cursor, round a ring of 6 slots; evaluation sums the ring scaled by B / (slots
    written): with one batch in it, it is the training objective. Training ignores the ring; a state_dict
    round trip gives the same evaluation terms."""
    settings = {"num_centroids": 6, "metric_hidden_dims": [16], "eps_lf": 0.05}
    model = make(RHVAE, settings)
    batch = fixed_batch(count=4)

    def elbo(module: RHVAE, mode: str, images: Tensor = batch.inputs) -> Tensor:
        torch.manual_seed(4)
        return getattr(module, mode)().loss_terms(Batch(images))["elbo"]

    with torch.no_grad():
        mu = model.encode(batch.inputs)[0]
        lower, raw = model.metric_network(batch.inputs), model.metric_network.net(batch.inputs)
        torch.testing.assert_close(lower.diagonal(dim1=1, dim2=2), raw[:, :8].exp())  # exp diagonal, then
        torch.testing.assert_close(lower[:, [1, 2, 2, 3], [0, 0, 1, 0]], raw[:, 8:12])  # row by row below
        assert lower.triu(1).abs().max() == 0
        train = elbo(model, "train")
        torch.testing.assert_close(model.metric_centroids[:4], mu)
        torch.testing.assert_close(model.metric_matrices[:4], lower @ lower.mT)
        assert model.metric_matrices[4:].abs().max() == 0
        assert ring_counters(model) == [4, 4, 4]
        torch.testing.assert_close(elbo(model, "eval"), train)
        elbo(model, "train")  # slots 4, 5, then 0, 1
        torch.testing.assert_close(model.metric_centroids, mu[[2, 3, 2, 3, 0, 1]])
        torch.testing.assert_close(model.stored_metric().matrices, model.metric_matrices * 4 / 6)
        more = fixed_batch(count=9).inputs  # more images than slots: the last 6, from the cursor on
        elbo(model, "train", more)
        torch.testing.assert_close(model.metric_centroids[[2, 3, 4, 5, 0, 1]], model.encode(more)[0][3:])
        assert ring_counters(model) == [2, 6, 9]
        copy = make(RHVAE, settings)
        copy.load_state_dict(model.state_dict())
        torch.testing.assert_close(elbo(copy, "eval"), elbo(model, "eval"), rtol=0, atol=0)
        before = {mode: elbo(model, mode) for mode in ("eval", "train")}
        model.metric_matrices.mul_(3)
        assert (elbo(model, "eval") - before["eval"]).abs().max() > 1e-3
        model.metric_matrices.mul_(1e6)
        torch.testing.assert_close(elbo(model, "train"), before["train"])


def test_the_terms_are_the_same_with_or_without_a_graph_and_under_inference_mode() -> None:
    """Autograd is switched on locally for dU/dz: training terms under no_grad equal those with a graph,
    evaluation under inference mode those under no_grad; the metric network is learnt through the loss."""
    model = make(RHVAE, {"eps_lf": 0.05, "metric_hidden_dims": [16]}, likelihood="bernoulli")
    batch = fixed_batch(count=3)

    def terms(mode: str) -> dict[str, Tensor]:
        torch.manual_seed(0)
        return getattr(model, mode)().loss_terms(batch)

    train = terms("train")
    with torch.no_grad():
        train_values, val = terms("train"), terms("eval")
    with torch.inference_mode():
        inference = terms("eval")
    for name in ("loss", "elbo", "recon", "kl"):
        torch.testing.assert_close(train_values[name], train[name].detach())
        torch.testing.assert_close(inference[name], val[name])
    train["loss"].mean().backward()
    assert all(p.grad.abs().sum() > 0 for p in model.metric_network.parameters())


def test_rhvae_waits_for_no_device(monkeypatch) -> None:
    """Training (the ring written on the device), evaluation and scoring: no host sync."""
    model = make(RHVAE, {"metric_hidden_dims": [16], "num_centroids": 5}, likelihood="bernoulli")
    assert_model_waits_for_nothing(monkeypatch, model, fixed_batch(count=4))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_lf": 0}, "n_lf must be at least 1"),
        ({"n_lf_fixed_point": 0}, "n_lf_fixed_point must be at least 1"),
        ({"eps_lf": 0.0}, "eps_lf must be > 0"),
        ({"beta_zero": 0.0}, r"beta_zero must lie in \(0, 1\]"),
        ({"beta_zero": 1.5}, r"beta_zero must lie in \(0, 1\]"),
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"regularization": 0.0}, "regularization must be > 0"),
        ({"metric_hidden_dims": [16, 0]}, "metric_hidden_dims must be positive widths"),
        ({"num_centroids": 0}, "num_centroids must be at least 1"),
        ({"beta": 2.0}, "RHVAE has no KL weight"),
        ({"kl_warmup_steps": 10}, "RHVAE has no KL weight"),
        ({"n_leapfrog": 3, "learn_eps": True}, "RHVAE does not take learn_eps, n_leapfrog"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message) -> None:
    with pytest.raises(ConfigError, match=message):
        RHVAE(**kwargs)
