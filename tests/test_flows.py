"""The flow layers and the flow VAEs: log-determinants against autograd Jacobians, the planar flow's
invertibility, the MADE's autoregressive masks, the objective against a hand computation."""

import pytest
import torch
from torch import nn
from torch.distributions import Normal

from ae_lightning.autoencoders.flow_vae import IAFVAE, FlowVAE, PlanarFlowVAE
from ae_lightning.autoencoders.flows import MADE, IAFStep, PlanarFlow, RadialFlow
from ae_lightning.autoencoders.vae import VAE, gaussian_kl
from ae_lightning.batch import Batch
from ae_lightning.errors import ConfigError
from tests.test_autoencoders import fixed_batch, make

#: a small case of each kind of posterior
MODELS = [
    (PlanarFlowVAE, {"num_flows": 3}),
    (PlanarFlowVAE, {"flows": "radial", "num_flows": 3}),
    (PlanarFlowVAE, {"flows": ["planar", "radial"], "num_flows": 2}),
    (IAFVAE, {"num_flows": 2, "made_hidden_dims": [16]}),
]
MODEL_IDS = ["planar", "radial", "planar-radial", "iaf"]


def randomized(layer: nn.Module) -> nn.Module:
    """`layer` in float64 with every parameter drawn from N(0, 1): far from the identity it starts near."""
    torch.manual_seed(0)
    layer = layer.double()
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.normal_()
    return layer


def jacobians(layer: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """dz'/dz of each row of z (B, D) alone, by autograd: (B, D, D)."""
    return torch.stack(
        [torch.autograd.functional.jacobian(lambda row: layer(row[None])[0][0], row) for row in z]
    )


@pytest.mark.parametrize(
    "layer",
    [PlanarFlow(5), RadialFlow(5), IAFStep(5, [16, 16]), IAFStep(5, [16], reverse=True)],
    ids=["planar", "radial", "iaf", "iaf-reversed"],
)
def test_log_det_is_that_of_the_autograd_jacobian(layer) -> None:
    layer = randomized(layer)
    z = torch.randn(6, 5, dtype=torch.float64)
    out, log_det = layer(z)
    assert out.shape == (6, 5) and log_det.shape == (6,)
    sign, expected = torch.linalg.slogdet(jacobians(layer, z))
    assert (sign > 0).all()  # orientation preserving, hence invertible
    torch.testing.assert_close(log_det, expected, rtol=0.0, atol=1e-5)


def test_planar_flow_stays_invertible_when_w_dot_u_is_below_minus_one() -> None:
    flow = randomized(PlanarFlow(5))
    with torch.no_grad():  # u moved along w until w.u = -3: f(z) = z + u tanh(w.z + b) would fold over
        flow.u -= ((flow.w @ flow.u + 3) / flow.w.square().sum()) * flow.w
    w, b = flow.w.detach(), flow.b.detach()
    assert (w @ flow.u).item() == pytest.approx(-3.0)
    assert (w @ flow.u_hat()).item() == pytest.approx(-1 + torch.nn.functional.softplus(torch.tensor(-3.0)))
    # across the fold (w.z + b from -3 to 3) w.f(z) rises strictly, and det > 0: with the raw u, where
    # w.z + b = 0 the Jacobian 1 + w.u would be -2
    t = torch.linspace(-3, 3, 201, dtype=torch.float64)
    across = torch.randn(5, dtype=torch.float64)
    across -= (across @ w) / w.square().sum() * w  # a part orthogonal to w: w.z + b = t
    z = (t - b)[:, None] * w / w.square().sum() + across
    out, log_det = flow(z)
    assert ((out @ w).diff() > 0).all()
    assert torch.isfinite(log_det).all()
    assert (torch.linalg.det(jacobians(flow, z[::20])) > 0).all()


@pytest.mark.parametrize("reverse", [False, True], ids=["order-1..D", "order-D..1"])
def test_made_is_autoregressive(reverse) -> None:
    """d(m, s)/dz is strictly lower triangular in the MADE's order, with every allowed entry used."""
    made = randomized(MADE(5, [16, 16], reverse=reverse))
    z = torch.randn(5, dtype=torch.float64)
    jacobian = torch.autograd.functional.jacobian(lambda v: torch.cat(made(v[None]), -1)[0], z)  # (10, 5)
    ordered = (made.order - 1).argsort()  # the variables in the autoregressive order
    for part in jacobian.chunk(2):  # m, then s
        in_order = part[ordered][:, ordered]
        assert torch.equal(in_order.triu(), torch.zeros(5, 5, dtype=torch.float64))
        assert (in_order.tril(-1).abs() > 1e-8).sum() == 10  # all 10 pairs (i before j) connected
    # one variable: (m, s) depend on nothing
    single = torch.autograd.functional.jacobian(
        lambda v: torch.cat(MADE(1, [4])(v[None]), -1)[0], torch.ones(1)
    )
    assert torch.equal(single, torch.zeros(2, 1))


def to_identity(model: FlowVAE) -> None:
    """Sets every flow layer to exactly (or, for IAF, to float32 precision) the identity."""
    with torch.no_grad():
        for layer in model.flows:
            if isinstance(layer, PlanarFlow):  # u = w = 0
                for parameter in layer.parameters():
                    parameter.zero_()
            elif isinstance(layer, RadialFlow):  # beta = softplus(0) - softplus(0) = 0
                layer.alpha_raw.zero_(), layer.beta_raw.zero_()
            else:  # m = 0 and sigma = sigmoid(102) = 1
                last = layer.made.net[-1]
                last.weight.zero_(), last.bias.zero_(), last.bias[model.latent_dim :].fill_(100.0)


@pytest.mark.parametrize("cls, extra", MODELS, ids=MODEL_IDS)
def test_identity_flows_give_the_vae_on_the_same_draw(cls, extra) -> None:
    """With every layer the identity, recon is the VAE's on the same draw, log_det 0 and kl log q0(z0) -
    log p(z0), whose average over draws is the VAE's closed-form KL."""
    vae = make(VAE, {"beta": 0.5})
    model = make(cls, {**extra, "beta": 0.5})
    missing, unexpected = model.load_state_dict(vae.state_dict(), strict=False)
    assert all(key.startswith("flows.") for key in missing) and not unexpected
    to_identity(model)
    model.eval(), vae.eval()
    batch = fixed_batch(count=4)
    torch.manual_seed(7)
    terms = model.loss_terms(batch)
    torch.manual_seed(7)
    reference = vae.loss_terms(batch)
    torch.manual_seed(7)
    mu, logvar = vae.encode(batch.inputs)
    std = (0.5 * logvar).exp()
    z0 = mu + std * torch.randn_like(mu)
    kl = (Normal(mu, std).log_prob(z0) - Normal(0.0, 1.0).log_prob(z0)).sum(1)
    torch.testing.assert_close(terms["recon"], reference["recon"])
    torch.testing.assert_close(terms["log_det"], torch.zeros(4), rtol=0.0, atol=1e-6)
    torch.testing.assert_close(terms["kl"], kl, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(terms["loss"], terms["recon"] + 0.5 * terms["kl"])
    torch.testing.assert_close(model.code(batch.inputs), mu)
    # the Monte Carlo KL averages to the closed form: 20000 draws, within 2%
    mu, logvar = torch.randn(3, 8), 0.5 * torch.randn(3, 8)
    _, draws, _ = model.flow_draws(mu, logvar, torch.randn(20000, 3, 8))
    torch.testing.assert_close(draws.mean(0), gaussian_kl(mu, logvar), rtol=0.02, atol=0.0)


@pytest.mark.parametrize("cls, extra", MODELS, ids=MODEL_IDS)
def test_kl_is_the_monte_carlo_estimate_through_the_flow(cls, extra) -> None:
    """kl = log q0(z0 | x) - sum log|det| - log p(z_K) on the draw z0 = mu + sigma * eps that recon decodes;
    training weighs it by the warm-up's weight, evaluation by beta."""
    model = make(cls, {**extra, "beta": 2.0, "kl_warmup_steps": 10})
    model.step = 5  # weight 2 * 5 / 10 = 1
    batch = fixed_batch(count=4)
    torch.manual_seed(3)
    terms = model.train().loss_terms(batch)
    torch.manual_seed(3)
    mu, logvar = model.encode(batch.inputs)
    std = (0.5 * logvar).exp()
    z0 = mu + std * torch.randn_like(mu)
    z, log_det = model.flow(z0)
    kl = Normal(mu, std).log_prob(z0).sum(1) - log_det - Normal(0.0, 1.0).log_prob(z).sum(1)
    recon = model.reconstruction_loss(model.decoder(z), batch.inputs)
    torch.testing.assert_close(terms["kl"], kl, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(terms["log_det"], log_det)
    torch.testing.assert_close(terms["recon"], recon)
    torch.testing.assert_close(terms["loss"], recon + 1.0 * kl, rtol=1e-5, atol=1e-4)
    torch.manual_seed(3)
    evaluated = model.eval().loss_terms(batch)
    torch.testing.assert_close(evaluated["loss"], evaluated["recon"] + 2.0 * evaluated["kl"])
    # code is the flow of mu, the reconstruction its decoding
    torch.testing.assert_close(model.code(batch.inputs), model.flow(mu)[0])
    torch.testing.assert_close(model.reconstruct(batch), model.decode(model.flow(mu)[0]))


@pytest.mark.parametrize("cls, extra", MODELS, ids=MODEL_IDS)
def test_one_sample_nll_and_the_score_are_the_flow_elbo(cls, extra) -> None:
    """The 1-sample NLL is recon + kl of the same draw (beta = 1); the score, their mean over fixed draws."""
    model = make(cls, extra).eval()
    batch = fixed_batch(count=4)
    torch.manual_seed(5)
    nll = model.negative_log_likelihood(batch, 1)
    torch.manual_seed(5)
    terms = model.loss_terms(batch)
    torch.testing.assert_close(nll, terms["recon"] + terms["kl"])
    score = model.anomaly_score(batch)
    torch.testing.assert_close(model.anomaly_score(batch), score)  # fixed draws: the same every time
    torch.testing.assert_close(model.anomaly_score(batch.with_inputs(batch.inputs[:1])), score[:1])
    torch.manual_seed(0)
    with torch.no_grad():
        many = torch.stack([(t["recon"] + t["kl"]) for t in (model.loss_terms(batch) for _ in range(400))])
    torch.testing.assert_close(model.anomaly_score(batch, num_samples=400), many.mean(0), rtol=0.03, atol=0.0)


@pytest.mark.parametrize("cls, extra", [MODELS[0], MODELS[-1]], ids=["planar", "iaf"])
def test_importance_sampled_nll_tightens_as_k_grows(cls, extra) -> None:
    torch.manual_seed(0)
    model = cls(likelihood="bernoulli", latent_dim=4, hidden_dims=[32], **extra).eval()
    x = torch.bernoulli(torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(1)))
    means = {}
    for k in (1, 10, 100):
        nll = torch.stack([model.negative_log_likelihood(Batch(x), k) for _ in range(10)])
        assert torch.isfinite(nll).all()
        means[k] = nll.mean().item()
    assert means[1] > means[10] > means[100]  # an upper bound on the NLL, falling towards it


@pytest.mark.parametrize(
    "cls, kwargs, message",
    [
        (PlanarFlowVAE, {"num_flows": 0}, "num_flows must be at least 1"),
        (IAFVAE, {"num_flows": -1}, "num_flows must be at least 1"),
        (PlanarFlowVAE, {"flows": "sylvester"}, "flows must be 'planar' or 'radial'"),
        (PlanarFlowVAE, {"flows": ["planar", "householder"], "num_flows": 2}, "got 'householder'"),
        (PlanarFlowVAE, {"flows": ["planar", "radial"]}, "lists 2 kinds but num_flows is 10"),
        (IAFVAE, {"made_hidden_dims": []}, "made_hidden_dims must be one or more positive"),
        (IAFVAE, {"made_hidden_dims": [32, 0]}, "made_hidden_dims must be one or more positive"),
    ],
)
def test_bad_arguments_are_refused(cls, kwargs, message) -> None:
    with pytest.raises(ConfigError, match=message):
        cls(**kwargs)
