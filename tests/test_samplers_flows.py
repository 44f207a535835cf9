"""The MAF, IAF and two-stage samplers: densities against a hand change of variables, autograd Jacobians and a
grid integral; fits against known distributions (their density and moments); seeded fits; a saved state that
loads into a fresh sampler and draws the same codes."""

import inspect
import io
import math

import pytest
import torch
from torch import Tensor

from ae_lightning.autoencoders import AE
from ae_lightning.autoencoders.vae import gaussian_log_density
from ae_lightning.errors import ConfigError
from ae_lightning.samplers.flows import LOG_SCALE_BOUND, AutoregressiveFlowSampler, IAFSampler, MAFSampler
from ae_lightning.samplers.two_stage import TwoStageSampler

FLOWS = [MAFSampler, IAFSampler]
#: a small flow that fits the 2-D wave in about a second
SMALL_FLOW = {
    "num_blocks": 4,
    "hidden_dims": [16, 16],
    "epochs": 20,
    "batch_size": 200,
    "learning_rate": 1e-2,
}
#: a small second VAE that fits the 4-D normal in about a second
SMALL_TWO_STAGE = {"hidden_dim": 32, "depth": 2, "epochs": 40, "batch_size": 250, "learning_rate": 5e-3}
#: the 4-D normal's mean and Cholesky factor (correlated, of unequal scales)
MEAN = torch.tensor([1.0, -2.0, 0.5, 3.0])
CHOLESKY = torch.tensor([[1.0, 0, 0, 0], [0.8, 0.6, 0, 0], [-0.5, 0.3, 0.5, 0], [0.2, -0.4, 0.6, 2.0]])


def wave(count: int, seed: int) -> Tensor:
    """x1 ~ N(0, 1), x2 ~ N(0.6 x1 + 0.8 sin(2 x1), 0.4^2): a curved 2-D density that an affine
    autoregressive flow can represent, (count, 2)."""
    generator = torch.Generator().manual_seed(seed)
    x1 = torch.randn(count, generator=generator)
    x2 = 0.6 * x1 + 0.8 * torch.sin(2 * x1) + 0.4 * torch.randn(count, generator=generator)
    return torch.stack([x1, x2], 1)


def wave_log_density(x: Tensor) -> Tensor:
    """The wave's true log-density, (N, 2) -> (N,)."""
    conditional_mean = 0.6 * x[:, 0] + 0.8 * torch.sin(2 * x[:, 0])
    return gaussian_log_density(x[:, 0]) + gaussian_log_density(x[:, 1], conditional_mean, 2 * math.log(0.4))


def correlated_normal(count: int, seed: int) -> Tensor:
    """Draws of N(MEAN, CHOLESKY CHOLESKY^T), (count, 4)."""
    return MEAN + torch.randn(count, 4, generator=torch.Generator().manual_seed(seed)) @ CHOLESKY.T


def stand_in(latent_dim: int) -> AE:
    """A tiny model for `sample_codes`, which reads only its device."""
    return AE(latent_dim=latent_dim, hidden_dims=[8])


def randomized(sampler: AutoregressiveFlowSampler) -> AutoregressiveFlowSampler:
    """`sampler` in float64 with every weight from N(0, 0.5^2) and a non-trivial standardisation: far from
    the identity every block starts as."""
    sampler = sampler.double()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in sampler.parameters():
            parameter.copy_(0.5 * torch.randn(parameter.shape, generator=generator, dtype=torch.float64))
        sampler.mean = torch.linspace(-1, 1, sampler.latent_dim, dtype=torch.float64)
        sampler.std = torch.linspace(0.5, 2, sampler.latent_dim, dtype=torch.float64)
    return sampler


@pytest.fixture(scope="module")
def fitted_flows() -> dict[str, AutoregressiveFlowSampler]:
    """A MAF and an IAF fitted to 2,000 draws of the wave."""
    flows = {}
    for cls in FLOWS:
        flows[cls.name] = cls(2, **SMALL_FLOW)
        flows[cls.name].fit(wave(2000, 0))
    return flows


def test_hand_change_of_variables_of_one_block() -> None:
    """D = 2, one block and no hidden layer: m = (a, b + w x1), s = (c, d + v x1) read from x (MAF) or from u
    (IAF), each s bounded softly; the density written out by hand."""
    a, b, w, c, d, v = 0.3, -0.2, 1.5, 0.4, -0.6, 0.8
    x = torch.tensor([[0.5, -1.0], [-2.0, 3.0], [1.0, 0.2]], dtype=torch.float64)

    def bounded(s: float | Tensor) -> Tensor:
        return LOG_SCALE_BOUND * torch.tanh(torch.as_tensor(s, dtype=torch.float64) / LOG_SCALE_BOUND)

    u1 = (x[:, 0] - a) * torch.exp(-bounded(c))
    maf_u2 = (x[:, 1] - b - w * x[:, 0]) * torch.exp(-bounded(d + v * x[:, 0]))
    iaf_u2 = (x[:, 1] - b - w * u1) * torch.exp(-bounded(d + v * u1))
    first = gaussian_log_density(u1) - bounded(c)
    expected = {
        "maf": first + gaussian_log_density(maf_u2) - bounded(d + v * x[:, 0]),
        "iaf": first + gaussian_log_density(iaf_u2) - bounded(d + v * u1),
    }
    for cls in FLOWS:
        flow = cls(2, num_blocks=1, hidden_dims=[]).double()
        layer = flow.blocks[0].net[-1]  # outputs m1, m2, s1, s2 from inputs x1, x2
        with torch.no_grad():
            layer.weight.copy_(torch.tensor([[0.0, 0], [w, 0], [0, 0], [v, 0]], dtype=torch.float64))
            layer.bias.copy_(torch.tensor([a, b, c, d], dtype=torch.float64))
        torch.testing.assert_close(flow.log_density(x), expected[cls.name], rtol=0, atol=1e-12)


@pytest.mark.parametrize("cls", FLOWS)
def test_log_density_is_a_change_of_variables(cls: type[AutoregressiveFlowSampler]) -> None:
    """Three blocks of D = 3 on standardised codes: log p(x) = log N(u(x); 0, I) + log|det du/dx|, the
    Jacobian by autograd; sampling inverts the map to the noise."""
    flow = randomized(cls(3, num_blocks=3, hidden_dims=[6, 6]))
    codes = torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2

    def noise_of(code: Tensor) -> Tensor:
        return flow.to_noise(((code - flow.mean) / flow.std)[None])[0][0]

    for code, log_density in zip(codes, flow.log_density(codes), strict=True):
        jacobian = torch.autograd.functional.jacobian(noise_of, code)
        expected = gaussian_log_density(noise_of(code)).sum() + torch.linalg.slogdet(jacobian)[1]
        torch.testing.assert_close(log_density, expected, rtol=1e-12, atol=1e-10)
    noise, _ = flow.to_noise((codes - flow.mean) / flow.std)
    torch.testing.assert_close(flow.to_codes(noise) * flow.std + flow.mean, codes, rtol=0, atol=1e-10)


@pytest.mark.parametrize("cls", FLOWS)
def test_fitted_flow_is_a_density_close_to_the_data(
    cls: type[AutoregressiveFlowSampler], fitted_flows: dict[str, AutoregressiveFlowSampler]
) -> None:
    """Fitted to the wave: exp(log-density) sums to 1 over a grid holding the mass, the KL divergence from
    the wave is small, and the samples' mean and covariance are the wave's."""
    flow = fitted_flows[cls.name]
    axis = torch.linspace(-6, 6, 241)
    grid = torch.cartesian_prod(axis, axis)
    step = float(axis[1] - axis[0])
    with torch.no_grad():
        integral = float(flow.log_density(grid).exp().sum()) * step**2
        test = wave(20_000, 1)
        divergence = float((wave_log_density(test) - flow.log_density(test)).mean())
    assert abs(integral - 1) < 0.01  # measured: 1.00001 for both
    assert 0 < divergence < 0.15  # measured: 0.05 (maf) and 0.06 (iaf) nats
    samples = flow.sample_codes(stand_in(2), 20_000, torch.Generator().manual_seed(0))
    assert samples.shape == (20_000, 2) and samples.dtype == torch.float32
    # measured: mean 0.03 (maf) and 0.05 (iaf) off, covariance 0.03 and 0.07
    torch.testing.assert_close(samples.mean(0), test.mean(0), rtol=0, atol=0.1)
    torch.testing.assert_close(torch.cov(samples.T), torch.cov(test.T), rtol=0, atol=0.15)


def test_two_stage_samples_a_correlated_normal() -> None:
    """Fitted to 4,000 draws of a correlated 4-D normal: the samples' mean and covariance are its own, and the
    negative ELBO per code bounds its entropy from above, closely."""
    sampler = TwoStageSampler(4, **SMALL_TWO_STAGE)
    sampler.fit(correlated_normal(4000, 0))
    samples = sampler.sample_codes(stand_in(4), 20_000, torch.Generator().manual_seed(0))
    assert samples.shape == (20_000, 4) and samples.dtype == torch.float32
    covariance = CHOLESKY @ CHOLESKY.T
    torch.testing.assert_close(samples.mean(0), MEAN, rtol=0, atol=0.1)  # measured: 0.055
    torch.testing.assert_close(torch.cov(samples.T), covariance, rtol=0, atol=0.15)  # measured: 0.037
    entropy = 0.5 * (4 * math.log(2 * math.pi * math.e) + float(torch.logdet(covariance)))  # 5.165 nats
    assert sampler.loss is not None
    assert entropy - 0.05 < sampler.loss < entropy + 0.25  # measured: 5.23
    assert sampler.gamma < 0.5  # gamma falls from 1 as the second VAE fits: measured 0.31


SAMPLERS = [(MAFSampler, SMALL_FLOW), (IAFSampler, SMALL_FLOW), (TwoStageSampler, SMALL_TWO_STAGE)]
SAMPLER_IDS = ["maf", "iaf", "two_stage"]


@pytest.mark.parametrize(("cls", "options"), SAMPLERS, ids=SAMPLER_IDS)
def test_fit_is_seeded_and_its_state_draws_the_same_codes(cls: type, options: dict) -> None:
    """Fitting twice with one seed gives the same state (another seed another); the state saved with
    torch.save and read with weights_only=True into a fresh sampler of the same options draws the same codes
    from the same generator."""
    codes = correlated_normal(500, 2)
    quick = options | {"epochs": 2}
    first, second, other = cls(4, **quick), cls(4, **quick), cls(4, **quick | {"seed": 1})
    for sampler in (first, second, other):
        sampler.fit(codes)
    state = first.state_dict()
    assert all(torch.equal(tensor, second.state_dict()[name]) for name, tensor in state.items())
    assert not all(torch.equal(tensor, other.state_dict()[name]) for name, tensor in state.items())
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = cls(4, **first.options())
    loaded.load_state_dict(torch.load(buffer, weights_only=True))
    model = stand_in(4)
    expected = first.sample_codes(model, 50, torch.Generator().manual_seed(3))
    torch.testing.assert_close(loaded.sample_codes(model, 50, torch.Generator().manual_seed(3)), expected)
    assert not torch.equal(first.sample_codes(model, 50, torch.Generator().manual_seed(4)), expected)


@pytest.mark.parametrize(("cls", "options"), SAMPLERS, ids=SAMPLER_IDS)
def test_options_are_the_constructor_arguments(cls: type, options: dict) -> None:
    """`options()` names every argument but latent_dim, as plain data that builds the same sampler; the
    base's refusal applies (an AE is served)."""
    sampler = cls(4, **options)
    arguments = set(inspect.signature(cls.__init__).parameters) - {"self", "latent_dim"}
    assert set(sampler.options()) == arguments
    assert cls(4, **sampler.options()).options() == sampler.options()
    assert all(isinstance(value, int | float | list) for value in sampler.options().values())
    assert cls.refusal(stand_in(4)) is None and cls.fitted


@pytest.mark.parametrize(
    ("cls", "options"),
    [
        (MAFSampler, {"num_blocks": 0}),
        (MAFSampler, {"hidden_dims": [16, 0]}),
        (IAFSampler, {"hidden_dims": 16}),
        (IAFSampler, {"epochs": 0}),
        (IAFSampler, {"learning_rate": 0.0}),
        (TwoStageSampler, {"batch_size": 0}),
        (TwoStageSampler, {"second_latent_dim": 0}),
        (TwoStageSampler, {"hidden_dim": 0}),
    ],
)
def test_bad_options_are_refused_in_one_line(cls: type, options: dict) -> None:
    """An option that cannot work raises ConfigError naming the sampler, in one line."""
    with pytest.raises(ConfigError, match=cls.name) as error:
        cls(4, **options)
    assert "\n" not in str(error.value)


def test_defaults() -> None:
    """The defaults: pythae's flow (2 MADE blocks of 3 x 128); a second latent as large as the code."""
    assert MAFSampler(16).options() == {
        "num_blocks": 2,
        "hidden_dims": [128, 128, 128],
        "epochs": 30,
        "batch_size": 256,
        "learning_rate": 1e-3,
        "seed": 0,
    }
    assert IAFSampler(16).options()["epochs"] == 3
    assert TwoStageSampler(16).options()["second_latent_dim"] == 16
