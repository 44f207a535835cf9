"""HRQ-VAE: the residual quantisation against hand loops, the Gumbel-softmax draws and their straight-through
gradients, depth dropout, the code layout the code-usage statistic reads, the objective by hand."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from ae_lightning.autoencoders import VQVAE
from ae_lightning.autoencoders.hrqvae import HRQVAE
from ae_lightning.errors import ConfigError
from ae_lightning.evaluation.statistics import CodeUsage, default_metrics
from ae_lightning.nets.quantizer import usage_statistics
from ae_lightning.nets.residual_quantizer import (
    ResidualQuantizer,
    depth_keep_mask,
    depth_norm_loss,
    gumbel_choice,
    uniform_kl,
)
from tests.syncs import assert_model_waits_for_nothing
from tests.test_autoencoders import fixed_batch, make


def hand_residual_quantisation(z: torch.Tensor, codebooks: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Level by level, in float64: the entry nearest the residual left by the levels above; the indices
    (N, L) and the sum of the chosen entries (N, D)."""
    residual, total, indices = z.double(), torch.zeros_like(z, dtype=torch.float64), []
    for codebook in codebooks:
        codebook = codebook.detach().double()
        index = (residual[:, None] - codebook).square().sum(-1).argmin(1)
        residual, total = residual - codebook[index], total + codebook[index]
        indices.append(index)
    return torch.stack(indices, 1), total


def codebooks(quantizer: ResidualQuantizer) -> list[torch.Tensor]:
    """Each level's codebook, (K, D)."""
    return [level.codebook for level in quantizer.levels]


def test_nearest_entries_are_a_hand_loop_and_the_code_their_sum() -> None:
    model = make(HRQVAE, {"codebook_size": 16, "code_dim": 2, "num_levels": 3}).eval()
    x = fixed_batch(count=6).inputs
    z = model.encoder(x).view(-1, 2)  # 4 vectors of 2 per image
    indices, total = hand_residual_quantisation(z, codebooks(model.quantizer))
    assert torch.equal(model.quantizer.choose(z)[0], indices)
    torch.testing.assert_close(model.code(x), total.view(6, 8).float())
    # the code is what evaluation decodes
    recon = model.reconstruction_loss(model.decoder(model.code(x)), x)
    torch.testing.assert_close(model.loss_terms(fixed_batch(count=6))["recon"], recon)
    assert model.train().code(x).equal(model.eval().code(x))  # deterministic in training mode too


def test_one_level_is_the_plain_vector_quantizer() -> None:
    vq = make(VQVAE, {"codebook_size": 16, "code_dim": 2}).eval()
    hrq = make(HRQVAE, {"codebook_size": 16, "code_dim": 2, "num_levels": 1}).eval()
    hrq.encoder.load_state_dict(vq.encoder.state_dict())
    with torch.no_grad():
        hrq.quantizer.levels[0].codebook.copy_(torch.randn(16, 2))
        vq.quantizer.codebook.copy_(hrq.quantizer.levels[0].codebook)
    x = fixed_batch(count=8).inputs
    assert torch.equal(hrq.codes(x), vq.codes(x))
    torch.testing.assert_close(hrq.code(x), vq.code(x))


def test_each_level_cuts_the_quantisation_error_of_random_vectors() -> None:
    """N(0, I / 4) vectors of 4 (norm about 1), 64 entries a level, norms 1, 0.5, 0.25, 0.125: the mean
    squared error falls at least 2-fold a level (seen: 0.99, 0.27, 0.070, 0.020, 0.0072)."""
    torch.manual_seed(0)
    quantizer = ResidualQuantizer(64, 4, num_levels=4, init_scale=1.0, init_decay_weight=0.5)
    for depth, level in enumerate(quantizer.levels):
        torch.testing.assert_close(level.codebook.norm(dim=1), torch.full((64,), 0.5**depth))
    z = torch.randn(2000, 4) / 2
    entries = quantizer.choose(z)[1]
    errors = [(z - entries[:, :depth].sum(1)).square().sum(1).mean().item() for depth in range(5)]
    assert all(after < before / 2 for before, after in itertools.pairwise(errors)), errors


def test_gumbel_draws_follow_the_softmax_of_negative_distances() -> None:
    torch.manual_seed(0)
    logits = torch.tensor([[0.0, -1.0, -2.0, 1.0]]).expand(40000, 4)
    index, relaxed = gumbel_choice(logits, temperature=0.5)
    frequencies = F.one_hot(index, 4).float().mean(0)
    torch.testing.assert_close(frequencies, logits[0].softmax(0), atol=0.01, rtol=0)
    torch.testing.assert_close(relaxed.sum(1), torch.ones(40000))


def test_training_choice_is_hard_with_straight_through_gradients() -> None:
    """With only the reconstruction term, the encoder learns in training through the relaxed choices (none
    reaches it in evaluation, where the choice is an argmin), and every level's codebook learns."""
    settings = {"codebook_size": 16, "code_dim": 2, "commitment_cost": 0.0, "norm_loss_weight": 0.0}
    model = make(HRQVAE, {**settings, "depth_drop_rate": 0.0, "temperature": 2.0}).train()
    batch = fixed_batch(count=6)
    z = model.encoder(batch.inputs)
    indices, entries, _ = model.quantizer.choose(z.view(-1, 2), model.temperatures())
    # each entry is exactly the chosen codebook row, the code their sum
    for level, codebook in enumerate(codebooks(model.quantizer)):
        assert torch.equal(entries[:, level], codebook[indices[:, level]])
    # a draw from softmax(-distances), not the nearest entry: the untrained encoder's vectors (norm about 0.1)
    # are about equally far from every level-1 entry (norm 1), so most draws differ (seen: 91%)
    assert not torch.equal(indices, model.quantizer.choose(z.view(-1, 2))[0])
    model.loss_terms(batch)["loss"].sum().backward()
    assert all(param.grad.abs().sum() > 0 for param in model.encoder.parameters())
    assert all(codebook.grad.abs().sum() > 0 for codebook in codebooks(model.quantizer))
    model.zero_grad()
    model.eval().loss_terms(batch)["loss"].sum().backward()
    assert all(param.grad is None or param.grad.abs().sum() == 0 for param in model.encoder.parameters())


def test_depth_dropout_masks() -> None:
    torch.manual_seed(0)
    assert torch.equal(depth_keep_mask(1000, 3, 0.0, torch.device("cpu")), torch.ones(1000, 3))
    only_first = torch.tensor([1.0, 0.0, 0.0]).expand(1000, 3)
    assert torch.equal(depth_keep_mask(1000, 3, 1 - 1e-7, torch.device("cpu")), only_first)
    mask = depth_keep_mask(40000, 3, 0.5, torch.device("cpu"))
    assert (mask[:, 1:] <= mask[:, :-1]).all()  # once a level is dropped, so is every level below
    torch.testing.assert_close(mask.mean(0), torch.tensor([1.0, 0.5, 0.25]), atol=0.01, rtol=0)


@pytest.mark.parametrize("rate, levels_kept", [(0.0, 3), (1 - 1e-7, 1)])
def test_depth_dropout_in_training(rate: float, levels_kept: int) -> None:
    model = make(HRQVAE, {"codebook_size": 16, "code_dim": 2, "depth_drop_rate": rate}).train()
    z = model.encoder(fixed_batch(count=6).inputs)
    torch.manual_seed(3)
    codes = model.quantize(z, training=True).codes
    torch.manual_seed(3)
    entries = model.quantizer.choose(z.view(-1, 2), model.temperatures())[1]
    torch.testing.assert_close(codes, entries[:, :levels_kept].sum(1).view(6, 8))


def test_codes_number_every_levels_entries_for_the_usage_statistic() -> None:
    model = make(HRQVAE, {"codebook_size": 8, "code_dim": 2, "num_levels": 3}).eval()
    x = fixed_batch(count=5).inputs
    codes = model.codes(x)
    assert codes.shape == (5, 4 * 3) and codes.dtype == torch.int64 and model.codebook_size == 24
    indices = model.quantizer.choose(model.encoder(x).view(-1, 2))[0]  # (vectors, levels)
    # vector by vector, level by level; level l's entry k is l * 8 + k
    assert torch.equal(codes.view(20, 3), indices + torch.tensor([0, 8, 16]))
    assert any(isinstance(metric, CodeUsage) for metric in default_metrics(model))
    usage = CodeUsage(model.codebook_size)
    usage.update({"codes": codes})
    counts = torch.bincount(codes.flatten(), minlength=24).double()
    torch.testing.assert_close(usage.compute(), usage_statistics(counts))


def test_training_metrics_count_the_nearest_entry_code_of_the_step() -> None:
    model = make(HRQVAE, {"codebook_size": 8, "code_dim": 2}).train()
    batch = fixed_batch()
    model.loss_terms(batch)
    counts = torch.bincount(model.codes(batch.inputs).flatten(), minlength=24).float()
    metrics = model.training_metrics()
    torch.testing.assert_close(metrics["perplexity"], usage_statistics(counts)["perplexity"])
    torch.testing.assert_close(metrics["codes_used"], usage_statistics(counts)["codes_used"])
    assert metrics["temperature"] == 1.0


def test_evaluation_objective_by_hand() -> None:
    settings = {"codebook_size": 8, "code_dim": 2, "commitment_cost": 0.3, "kl_weight": 0.2}
    model = make(HRQVAE, {**settings, "norm_loss_weight": 0.7, "norm_loss_scale": 1.5}).eval()
    batch = fixed_batch(count=3)
    x = batch.inputs
    terms = model.loss_terms(batch)
    z = model.encoder(x).view(3, 4, 2).double()
    indices, code = hand_residual_quantisation(z.view(-1, 2), codebooks(model.quantizer))
    commitment = (z.view(-1, 2) - code).square().sum(1).view(3, 4).sum(1)
    entries = torch.stack(
        [book.detach().double()[indices[:, i]] for i, book in enumerate(codebooks(model.quantizer))], 1
    )
    norms = entries.norm(dim=-1)  # (12, 3)
    norm_loss = ((1.5 * norms[:, 1:] / norms[:, :-1]).clamp(min=1) - 1).square().mean(1).view(3, 4).sum(1)
    residuals = z.view(-1, 1, 2) - F.pad(entries.cumsum(1)[:, :-1], (0, 0, 1, 0))  # what each level saw
    distances = torch.stack([(residuals[:, i, None] - book.detach().double()).square().sum(-1)
                             for i, book in enumerate(codebooks(model.quantizer))], 1)  # fmt: skip
    probs = (-distances).softmax(-1)
    kl = (probs * (probs * 8).log()).sum((1, 2)).view(3, 4).sum(1)
    recon = (torch.sigmoid(model.decoder(code.view(3, 8).float())) - x).square().sum((1, 2, 3))
    expected = {"recon": recon, "commitment": commitment, "kl": kl, "norm_loss": norm_loss}
    for name, value in expected.items():
        torch.testing.assert_close(terms[name], value.float(), rtol=1e-4, atol=1e-5)
    loss = recon + 0.3 * commitment + 0.2 * kl + 0.7 * norm_loss
    torch.testing.assert_close(terms["loss"], loss.float(), rtol=1e-4, atol=1e-4)


def test_norm_loss_and_uniform_kl_on_tiny_tensors() -> None:
    entries = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [0.3, 0.4]]])  # norms 2, 1, 0.5
    # 1.5 * 1 / 2 = 0.75 -> 0; 1.5 * 0.5 / 1 = 0.75 -> 0; with scale 3: (1.5 - 1)^2 twice
    assert depth_norm_loss(entries, 1.5).item() == 0
    assert depth_norm_loss(entries, 3.0).item() == pytest.approx(0.25)
    logits = torch.tensor([[math.log(3.0), 0.0]])  # p = (3/4, 1/4)
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert uniform_kl(logits).item() == pytest.approx(expected)


def test_temperature_anneals_more_slowly_at_deeper_levels() -> None:
    model = make(HRQVAE, {"temperature": 2.0, "min_temperature": 0.5, "temperature_decay_steps": 100})
    assert model.temperatures() == [2.0, 2.0, 2.0]
    model.step = 150
    assert model.temperatures() == pytest.approx(
        [0.5, 2 * math.exp(-1.0), 2 * math.exp(-1 / 1.5)]  # 2 e^-1.5 < 0.5: the floor
    )
    model.step = 10**6
    assert model.temperatures() == [0.5, 0.5, 0.5]


def test_mixed_precision_picks_the_float32_entries() -> None:
    torch.manual_seed(0)
    quantizer = ResidualQuantizer(64, 4, num_levels=3)
    z = torch.randn(256, 4) / 2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = quantizer(z.bfloat16(), temperatures=None, update=True)
    assert torch.equal(out.indices, hand_residual_quantisation(z.bfloat16().float(), codebooks(quantizer))[0])
    assert all(term.dtype == torch.float32 for term in (out.codes, out.commitment, out.kl, out.norm_loss))


def test_steps_do_not_wait_for_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training (draws, depth dropout, counts, dead-entry reset) and evaluation, counted on the CPU."""
    model = make(HRQVAE, {"codebook_size": 8, "code_dim": 2, "kl_weight": 0.1, "dead_code_threshold": 0.1})
    batch = fixed_batch()

    def evaluate_codes() -> None:
        with torch.no_grad():
            model.codes(batch.inputs)

    assert_model_waits_for_nothing(monkeypatch, model, batch, 0, model.training_metrics, evaluate_codes)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_levels": 0}, "num_levels must be at least 1"),
        ({"codebook_size": 1}, "codebook_size must be at least 2"),
        ({"code_dim": 3}, "code_dim must be a positive divisor of latent_dim 8"),
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"min_temperature": 2.0}, r"min_temperature must be in \(0, temperature 1.0\]"),
        ({"depth_drop_rate": 1.0}, r"depth_drop_rate must be in \[0, 1\)"),
        ({"dead_code_threshold": -0.1}, r"dead_code_threshold must be in \[0, 1\)"),
        ({"init_decay_weight": 1.5}, r"init_decay_weight must be in \(0, 1\]"),
        ({"init_scale": 0.0}, "init_scale must be > 0"),
        ({"commitment_cost": -1.0}, "commitment_cost must be >= 0"),
        ({"norm_loss_weight": -1.0}, "norm_loss_weight must be >= 0"),
        ({"kl_weight": -1.0}, "kl_weight must be >= 0"),
        ({"temperature_decay_steps": -1}, "temperature_decay_steps must be >= 0"),
        ({"norm_loss_scale": 0.5}, "norm_loss_scale must be >= 1"),
    ],
)
def test_refuses_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        HRQVAE(latent_dim=8, **kwargs)
