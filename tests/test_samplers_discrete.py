"""The PixelCNN sampler of discrete codes (causal masks, a known Markov chain learnt back, the code of drawn
indices, a saved fit) and the RHVAE sampler (HMC that keeps a Gaussian, its target's gradient, a flat metric's
random walk, repeatable draws), with no wait for the device."""

import io

import pytest
import torch

from ae_lightning.autoencoders import VAE, VQVAE
from ae_lightning.autoencoders.hrqvae import HRQVAE
from ae_lightning.autoencoders.rhvae import RHVAE
from ae_lightning.autoencoders.rhvae_metric import CentroidMetric
from ae_lightning.errors import ConfigError
from ae_lightning.samplers.pixelcnn import PixelCNNSampler
from ae_lightning.samplers.rhvae import RHVAESampler, hamiltonian_monte_carlo, volume_log_target
from tests.syncs import count_host_syncs
from tests.test_autoencoders import fixed_batch, make
from tests.variants import SETTINGS

#: a small PixelCNN that fits in a second
SMALL = {"embedding_dim": 16, "channels": 16, "num_layers": 2, "kernel_size": 3, "epochs": 15, "lr": 0.03}
#: the first value and the transitions of the Markov chain it learns: value 3 never starts a sequence, and
#: 0 -> 3 and 3 -> 1 never happen
FIRST = torch.tensor([0.4, 0.3, 0.3, 0.0])
TRANSITIONS = torch.tensor(
    [[0.1, 0.6, 0.3, 0.0], [0.5, 0.1, 0.1, 0.3], [0.0, 0.2, 0.2, 0.6], [0.7, 0.0, 0.2, 0.1]]
)


def markov_sequences(count: int, length: int, seed: int = 1) -> torch.Tensor:
    """`count` sequences of the chain, (count, length) int64."""
    generator = torch.Generator().manual_seed(seed)
    sequences = torch.empty(count, length, dtype=torch.long)
    sequences[:, 0] = torch.multinomial(FIRST, count, replacement=True, generator=generator)
    for position in range(1, length):
        rows = TRANSITIONS[sequences[:, position - 1]]
        sequences[:, position] = torch.multinomial(rows, 1, generator=generator)[:, 0]
    return sequences


def transition_frequencies(sequences: torch.Tensor) -> torch.Tensor:
    """How often b follows a over all positions, each row a normalised, (4, 4)."""
    counts = torch.zeros(4, 4)
    pairs = (sequences[:, :-1].flatten(), sequences[:, 1:].flatten())
    counts.index_put_(pairs, torch.ones(pairs[0].numel()), accumulate=True)
    return counts / counts.sum(1, keepdim=True)


@pytest.mark.parametrize("kernel_size, num_layers", [(3, 3), (5, 2)])
def test_position_i_sees_the_indices_before_it_only(kernel_size: int, num_layers: int) -> None:
    """Changing x_i.. leaves the conditionals at positions <= i exactly as they were (type A first layer,
    type B after); changing x_(i-1) changes position i's."""
    options = {"embedding_dim": 4, "channels": 8, "num_layers": num_layers, "kernel_size": kernel_size}
    sampler = PixelCNNSampler(latent_dim=8, codebook_size=5, code_length=8, **options)
    indices = torch.randint(5, (6, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = sampler.log_conditionals(indices)
        for position in range(8):
            changed = indices.clone()
            changed[:, position:] = (changed[:, position:] + 1 + torch.arange(8 - position)) % 5
            after = sampler.log_conditionals(changed)
            assert torch.equal(after[..., : position + 1], before[..., : position + 1])
            if position < 7:
                assert (after[..., position + 1] - before[..., position + 1]).abs().max() > 1e-4
        torch.testing.assert_close(before.exp().sum(1), torch.ones(6, 8))


def test_a_fitted_pixelcnn_learns_a_markov_chain_back() -> None:
    """4000 sequences of 6 from a known chain (15 epochs of 10 batches): its conditionals p(x_i | x_(i-1)),
    averaged over the data, are the transition matrix within 0.02 (measured 0.010; the data's own
    frequencies are off by 0.006), 4000 draws' transition frequencies within 0.03 (measured 0.017), their
    first values' within 0.03 (0.007), and -log p per sequence is the data's under the true chain within
    0.03 nats (5.907 and 5.908). A value never seen at a position has probability 0 there: 3 never starts a
    draw."""
    sequences = markov_sequences(4000, 6)
    sampler = PixelCNNSampler(latent_dim=6, codebook_size=4, code_length=6, batch_size=400, **SMALL)
    sampler.fit(sequences)
    with torch.no_grad():
        conditionals = sampler.log_conditionals(sequences).exp()[:, :, 1:].transpose(1, 2)  # (N, 5, 4)
    previous = sequences[:, :-1]
    learnt = torch.stack([conditionals[previous == value].mean(0) for value in range(4)])
    assert (learnt - TRANSITIONS).abs().max() < 0.02
    draws = sampler.sample_indices(4000, torch.Generator().manual_seed(0))
    assert (transition_frequencies(draws) - TRANSITIONS).abs().max() < 0.03
    first = torch.bincount(draws[:, 0], minlength=4) / 4000
    assert (first - FIRST).abs().max() < 0.03 and first[3] == 0
    true_log_p = FIRST[sequences[:, 0]].log() + TRANSITIONS[previous, sequences[:, 1:]].log().sum(1)
    assert sampler.negative_log_likelihood == pytest.approx(-true_log_p.mean().item(), abs=0.03)


@pytest.mark.parametrize("backbone, hidden_dims", [("mlp", [64]), ("conv", [8, 16])])
@pytest.mark.parametrize("cls", [VQVAE, HRQVAE])
def test_the_code_of_the_codes_is_the_code(cls: type, backbone: str, hidden_dims: list[int]) -> None:
    """`code_of(codes(x))` is `code(x)` bit for bit; an HRQVAE's codes run vector by vector, level l's
    entries numbered from (l - 1) x 16 (4 vectors x 3 levels of 16 entries)."""
    model = make(cls, SETTINGS[cls.__name__], backbone=backbone, hidden_dims=hidden_dims).eval()
    x = fixed_batch(count=8).inputs
    with torch.no_grad():
        codes = model.codes(x)
        assert codes.shape == (8, model.code_length) and codes.dtype == torch.int64
        assert torch.equal(model.code_of(codes), model.code(x))
    if cls is HRQVAE:
        assert model.code_length == 12
        assert torch.equal(codes // 16, (torch.arange(12) % 3).expand(8, -1))


def test_hrqvae_draws_keep_each_level_in_its_place_and_decode() -> None:
    """Fitted on an HRQVAE's codes (one sequence of 12 over 48 values), every drawn index at position p is an
    entry of level p mod 3, one seen there in training; the draws decode to finite images."""
    model = make(HRQVAE, SETTINGS["HRQVAE"]).eval()
    sampler = PixelCNNSampler.for_model(model, **SMALL | {"epochs": 2})
    with torch.no_grad():
        codes = sampler.encode(model, fixed_batch(count=16).inputs)
    sampler.fit(codes)
    draws = sampler.sample_indices(200, torch.Generator().manual_seed(0))
    assert torch.equal(draws // 16, (torch.arange(12) % 3).expand(200, -1))
    seen = torch.zeros(12, 48, dtype=torch.bool).scatter_(1, codes.T, True)
    assert seen.gather(1, draws.T).all()
    images = sampler.sample(model, 5, torch.Generator().manual_seed(0))
    assert images.shape == (5, 1, 28, 28) and images.isfinite().all()


def test_a_saved_fit_draws_the_same_codes() -> None:
    """A fit is a function of the codes and the options; its state_dict, saved and loaded with
    weights_only=True into a fresh sampler with the same options, draws the same codes for the same seed."""
    model = make(VQVAE, SETTINGS["VQVAE"]).eval()
    options = SMALL | {"epochs": 2}
    sampler = PixelCNNSampler.for_model(model, **options)
    with torch.no_grad():
        codes = sampler.encode(model, fixed_batch(count=16).inputs)
    sampler.fit(codes)
    again = PixelCNNSampler.for_model(model, **options)
    again.fit(codes)
    fitted, refitted = sampler.state_dict(), again.state_dict()
    assert all(torch.equal(fitted[name], refitted[name]) for name in fitted)
    buffer = io.BytesIO()
    torch.save(sampler.state_dict(), buffer)
    buffer.seek(0)
    fresh = PixelCNNSampler.for_model(model, **options)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    expected = {"codebook_size": 16, "code_length": 4, "batch_size": 64, "seed": 0} | options
    assert fresh.options() == sampler.options() == expected
    drawn = sampler.sample_codes(model, 10, torch.Generator().manual_seed(3))
    assert drawn.shape == (10, 8)
    assert torch.equal(fresh.sample_codes(model, 10, torch.Generator().manual_seed(3)), drawn)
    assert not torch.equal(fresh.sample_codes(model, 10, torch.Generator().manual_seed(4)), drawn)
    codebook = model.quantizer.codebook.detach()
    assert (drawn.view(10, 4, 1, 2) - codebook).abs().sum(-1).min(-1).values.max() == 0  # codebook entries


def test_hmc_leaves_a_gaussian_invariant() -> None:
    """20000 chains started at N(0, I) draws in 2-D, 10 moves of 3 leapfrog steps of 1.2 towards N(0, I):
    still N(0, I) (mean within 0.03, variances within 0.04 of 1: measured 0.002 and 0.023) although 85% of
    the moves are accepted; the same moves all accepted (no Metropolis correction) give variances of 1.54."""
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(20000, 2, generator=generator)
    gammas, uniforms = (
        torch.randn(10, 20000, 2, generator=generator),
        torch.rand(10, 20000, generator=generator),
    )

    def gaussian(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return -0.5 * z.square().sum(1), -z

    z, acceptance = hamiltonian_monte_carlo(start, gaussian, gammas, uniforms, n_lf=3, eps_lf=1.2)
    assert z.mean(0).abs().max() < 0.03 and (z.var(0) - 1).abs().max() < 0.04
    assert 0.7 < acceptance.mean() < 0.95
    unadjusted, _ = hamiltonian_monte_carlo(start, gaussian, gammas, torch.zeros_like(uniforms), 3, 1.2)
    assert unadjusted.var(0).min() > 1.3


def test_the_target_is_the_log_inverse_volume_element_and_its_gradient() -> None:
    """log pi(z) = (1/2) log det G^{-1}(z), and the gradient the leapfrog uses is autograd's of it."""
    generator = torch.Generator().manual_seed(0)
    lower = torch.randn(5, 3, 3, generator=generator).tril()
    metric = CentroidMetric(torch.randn(5, 3, generator=generator), lower @ lower.mT, 1.5, 0.01)
    z = torch.randn(7, 3, generator=generator, requires_grad=True)
    expected = 0.5 * torch.logdet(metric.inverse(z))
    (gradient,) = torch.autograd.grad(expected.sum(), z)
    log_pi, grad = volume_log_target(metric)(z.detach())
    torch.testing.assert_close(log_pi, expected.detach())
    torch.testing.assert_close(grad, gradient)


def test_with_an_empty_ring_the_chains_random_walk_from_zero() -> None:
    """An untrained RHVAE's metric is lambda I, so pi is flat: every move is accepted, and after 4 moves of 2
    steps of 0.1 a chain from 0 is 0.2 x the sum of 4 standard normal draws: N(0, 0.16 I)."""
    model = make(RHVAE, SETTINGS["RHVAE"]).eval()
    sampler = RHVAESampler.for_model(model, mcmc_steps=4, n_lf=2, eps_lf=0.1)
    z = sampler.sample_codes(model, 4000, torch.Generator().manual_seed(0))
    assert torch.equal(sampler.acceptance, torch.ones(4000))
    assert z.mean(0).abs().max() < 0.025 and (z.var(0) / 0.16 - 1).abs().max() < 0.1


@pytest.mark.parametrize("start", ["centroids", "prior"])
def test_rhvae_draws_are_finite_repeatable_and_decode(start: str) -> None:
    """A tiny RHVAE whose ring one training pass filled with 16 centroids: 32 finite codes of 8, the same for
    the same seed, others for another; they moved from where they started, and decode to finite images."""
    model = make(RHVAE, SETTINGS["RHVAE"])
    with torch.no_grad():
        model.train().loss_terms(fixed_batch(count=16))
    model.eval()
    sampler = RHVAESampler.for_model(model, mcmc_steps=10, n_lf=5, eps_lf=0.05, start=start)
    expected = {"mcmc_steps": 10, "n_lf": 5, "eps_lf": 0.05, "beta_zero": 1.0, "start": start}
    assert sampler.options() == expected
    z = sampler.sample_codes(model, 32, torch.Generator().manual_seed(0))
    assert z.shape == (32, 8) and z.dtype == torch.float32 and z.isfinite().all()
    assert torch.equal(sampler.sample_codes(model, 32, torch.Generator().manual_seed(0)), z)
    assert not torch.equal(sampler.sample_codes(model, 32, torch.Generator().manual_seed(1)), z)
    starts = sampler.starting_points(model, 32, torch.Generator().manual_seed(0))
    assert (z - starts).norm(dim=1).min() > 0.05
    if start == "centroids":
        assert (starts[:, None] - model.metric_centroids[:16]).abs().sum(-1).min(1).values.max() == 0
    images = sampler.sample(model, 4, torch.Generator().manual_seed(0))
    assert images.shape == (4, 1, 28, 28) and images.isfinite().all()


def test_drawing_waits_for_nothing(monkeypatch) -> None:
    """Both samplers draw (with or without a generator) without a host sync."""
    vqvae, rhvae = make(VQVAE, SETTINGS["VQVAE"]).eval(), make(RHVAE, SETTINGS["RHVAE"]).eval()
    pixelcnn = PixelCNNSampler.for_model(vqvae, **SMALL)
    riemannian = RHVAESampler.for_model(rhvae, mcmc_steps=2, n_lf=2)
    with count_host_syncs(monkeypatch) as syncs:
        syncs.active = True
        for generator in (None, torch.Generator().manual_seed(0)):
            pixelcnn.sample_codes(vqvae, 4, generator)
            riemannian.sample_codes(rhvae, 4, generator)
        syncs.active = False
    assert syncs.found == []


@pytest.mark.parametrize(
    "sampler, options, message",
    [
        (PixelCNNSampler, {"kernel_size": 4}, "odd kernel_size >= 3"),
        (PixelCNNSampler, {"channels": 0, "epochs": 0}, "got channels=0, epochs=0"),
        (PixelCNNSampler, {"lr": 0.0}, "lr > 0"),
        (RHVAESampler, {"n_lf": 0}, "n_lf >= 1"),
        (RHVAESampler, {"beta_zero": 1.5}, r"beta_zero in \(0, 1\]"),
        (RHVAESampler, {"start": "origin"}, "start must be one of centroids, prior"),
    ],
)
def test_bad_options_are_refused_in_one_line(sampler: type, options: dict, message: str) -> None:
    model = make(VQVAE if sampler is PixelCNNSampler else RHVAE, {})
    with pytest.raises(ConfigError, match=message) as error:
        sampler.for_model(model, **options)
    assert "\n" not in str(error.value)


def test_models_without_the_right_code_are_refused() -> None:
    vae = make(VAE, {})
    assert PixelCNNSampler.refusal(vae) == "pixelcnn draws codebook indices; VAE's codes are vectors in R^D"
    assert PixelCNNSampler.refusal(make(HRQVAE, {"codebook_size": 4, "code_dim": 2})) is None
    assert RHVAESampler.refusal(vae) == "the rhvae sampler draws with an RHVAE's learnt metric; VAE has none"
    with pytest.raises(ValueError, match="pixelcnn draws codebook indices"):
        PixelCNNSampler.for_model(vae)
    model = make(VQVAE, SETTINGS["VQVAE"])
    with pytest.raises(ConfigError, match=r"fits codebook indices \(N, 4\)"):
        PixelCNNSampler.for_model(model).fit(torch.zeros(3, 4))
    with pytest.raises(ConfigError, match=r"indices in \[0, 16\)"):
        PixelCNNSampler.for_model(model).fit(torch.full((3, 4), 16))
