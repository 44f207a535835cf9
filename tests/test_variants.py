"""The objective of each added variant against a hand computation on a tiny case."""

import math

import pytest
import torch
from torch.distributions import Normal

from ae_lightning.autoencoders import IWAE, VAE, VQVAE, ConditionalVAE, ContractiveAE, SparseAE
from ae_lightning.autoencoders.vae import gaussian_kl
from ae_lightning.batch import Batch
from ae_lightning.errors import ConfigError
from ae_lightning.evaluation.statistics import ActiveUnitCount, CodeCounts
from ae_lightning.nets import VectorQuantizer
from ae_lightning.nets.quantizer import usage_statistics
from tests.test_autoencoders import fixed_batch, make

# --- SparseAE ---


def test_sparse_kl_penalty_is_the_bernoulli_kl_of_the_mean_activation() -> None:
    model = make(SparseAE, {"sparsity_penalty": "kl", "sparsity_target": 0.1, "sparsity_weight": 3.0})
    batch = fixed_batch(count=6)
    x = batch.inputs
    terms = model.train().loss_terms(batch)
    code = torch.sigmoid(model.encoder(x))  # (6, 8)
    expected = 0.0
    for unit in range(8):
        rate = code[:, unit].mean().item()
        expected += 0.1 * math.log(0.1 / rate) + 0.9 * math.log(0.9 / (1 - rate))
    torch.testing.assert_close(terms["sparsity"], torch.full((6,), expected))
    torch.testing.assert_close(terms["mean_activation"], code.mean(1))
    torch.testing.assert_close(terms["loss"], terms["recon"] + 3.0 * expected)


def test_sparse_kl_penalty_vanishes_at_the_target_rate() -> None:
    model = make(SparseAE, {"sparsity_target": 0.2})
    assert model.sparsity(torch.full((4, 8), 0.2)).abs().max() < 1e-6
    assert (model.sparsity(torch.full((4, 8), 0.5)) > 0).all()


def test_sparse_l1_penalty_is_the_l1_norm_of_the_relu_code() -> None:
    model = make(SparseAE, {"sparsity_penalty": "l1", "sparsity_weight": 0.5})
    batch = fixed_batch(count=4)
    x = batch.inputs
    terms = model.train().loss_terms(batch)
    code = model.encoder(x).clamp(min=0)
    torch.testing.assert_close(terms["sparsity"], code.sum(1))
    torch.testing.assert_close(terms["loss"], terms["recon"] + 0.5 * code.sum(1))


# --- ContractiveAE ---


@pytest.mark.parametrize(
    "backbone, hidden_dims",
    [("mlp", [32]), ("mlp", [32, 16]), ("conv", [4, 8])],
    ids=["mlp-closed-form", "mlp-autograd", "conv-autograd"],
)
def test_contractive_penalty_is_the_squared_frobenius_norm_of_the_encoder_jacobian(
    backbone, hidden_dims
) -> None:
    model = make(ContractiveAE, {"contractive_weight": 0.3}, backbone=backbone, hidden_dims=hidden_dims)
    batch = fixed_batch(count=3)
    x = batch.inputs
    terms = model.train().loss_terms(batch)
    expected = torch.stack(
        [
            torch.autograd.functional.jacobian(lambda image: model.encoder(image[None])[0], image)
            .square()
            .sum()
            for image in x
        ]
    )
    torch.testing.assert_close(terms["jacobian_penalty"], expected)
    torch.testing.assert_close(terms["loss"], terms["recon"] + 0.3 * expected)
    # the penalty trains the encoder: it has a gradient with respect to the weights
    (grad,) = torch.autograd.grad(terms["jacobian_penalty"].sum(), model.encoder.net[-1].weight)
    assert grad.abs().sum() > 0


@pytest.mark.parametrize("hidden_dims", [[32], [32, 16]], ids=["closed-form", "autograd"])
def test_contractive_penalty_is_computed_under_inference_mode_too(hidden_dims) -> None:
    """Validation runs under torch.inference_mode; the penalty must still be the same number."""
    model = make(ContractiveAE, {}, hidden_dims=hidden_dims)
    batch = fixed_batch(count=3)
    train = model.train().loss_terms(batch)["jacobian_penalty"]
    with torch.inference_mode():
        val = model.eval().loss_terms(batch)["jacobian_penalty"]
    torch.testing.assert_close(val, train.detach())


# --- beta-VAE: KL annealing, KL per unit, active units ---


@pytest.mark.parametrize("step, weight", [(0, 0.0), (25, 1.0), (50, 2.0), (100, 4.0), (1000, 4.0)])
def test_kl_warmup_rises_linearly_to_beta(step, weight) -> None:
    model = make(VAE, {"beta": 4.0, "kl_warmup_steps": 100})
    model.step = step  # optimizer steps taken
    assert model.kl_weight() == pytest.approx(weight)
    batch = fixed_batch(count=4)
    torch.manual_seed(0)
    train = model.train().loss_terms(batch)
    torch.testing.assert_close(train["loss"], train["recon"] + weight * train["kl"])
    torch.manual_seed(0)
    val = model.eval().loss_terms(batch)  # validation weighs the KL by beta itself, whatever the step
    torch.testing.assert_close(val["loss"], val["recon"] + 4.0 * val["kl"])


def test_vae_without_warmup_uses_beta_from_the_first_step() -> None:
    assert make(VAE, {"beta": 2.5}).kl_weight() == 2.5


def test_kl_per_unit_adds_up_to_the_kl() -> None:
    model = make(VAE, {})
    batch = fixed_batch(count=5)
    x = batch.inputs
    terms = model.eval().loss_terms(batch)
    per_unit = torch.stack([terms[f"kl_dim/{unit}"] for unit in range(8)], 1)
    mu, logvar = model.encode(x)
    torch.testing.assert_close(per_unit.sum(1), gaussian_kl(mu, logvar))
    assert "kl_dim/0" not in model.train().loss_terms(batch)  # per unit only where it is logged per epoch


def test_active_units_count_the_units_whose_posterior_mean_varies() -> None:
    metric = ActiveUnitCount(latent_dim=4)
    generator = torch.Generator().manual_seed(0)
    means = torch.randn(600, 4, generator=generator) * torch.tensor([1.0, 0.2, 0.05, 0.0])
    for chunk in means.split(128):  # batch by batch, as validation does
        metric.update(chunk)
    torch.testing.assert_close(metric.variances(), means.double().var(0, unbiased=False))
    # variances ~1, 0.04, 0.0025, 0: two above 0.01
    assert metric.compute().item() == 2


# --- ConditionalVAE ---


@pytest.mark.parametrize("backbone, hidden_dims", [("mlp", [32]), ("conv", [4, 8])])
def test_cvae_networks_see_the_one_hot_label(backbone, hidden_dims) -> None:
    model = make(ConditionalVAE, {"num_classes": 10}, backbone=backbone, hidden_dims=hidden_dims)
    batch = fixed_batch(count=4)
    x = batch.inputs
    labels = torch.tensor([3, 0, 9, 3])
    seen: dict[str, torch.Tensor] = {}

    def recorder(name: str):
        def record(module, args) -> None:  # returns None: the input goes on unchanged
            seen[name] = args[0]

        return record

    model.encoder.net.register_forward_pre_hook(recorder("encoder"))
    model.decoder.net.register_forward_pre_hook(recorder("decoder"))
    torch.manual_seed(0)
    model.train().loss_terms(Batch(x, labels))
    one_hot = torch.eye(10)[labels]
    if backbone == "mlp":  # the label appended to the pixels
        torch.testing.assert_close(seen["encoder"], torch.cat([x.flatten(1), one_hot], 1))
    else:  # the label as 10 constant channels after the image's
        torch.testing.assert_close(seen["encoder"][:, :1], x)
        torch.testing.assert_close(seen["encoder"][:, 1:], one_hot[:, :, None, None].expand(-1, -1, 28, 28))
    torch.testing.assert_close(seen["decoder"][:, 8:], one_hot)  # the code, then the label
    # the same code decodes differently under another label
    z = torch.randn(1, 8).expand(2, 8)
    first, second = model.decode(z, torch.tensor([1, 2])).unbind(0)
    assert not torch.allclose(first, second)


def test_cvae_grid_samples_are_one_row_per_class_from_the_same_noise() -> None:
    model = make(ConditionalVAE, {"num_classes": 10}).eval()
    samples = model.grid_samples(32, nrow=8, generator=torch.Generator().manual_seed(5))
    assert samples.shape == (80, 1, 28, 28)
    z = torch.randn(8, 8, generator=torch.Generator().manual_seed(5))
    for label in (0, 7):
        row = samples[8 * label : 8 * (label + 1)]
        torch.testing.assert_close(row, model.decode(z, torch.full((8,), label)))


def test_cvae_refuses_batches_without_labels_and_labels_out_of_range() -> None:
    model = make(ConditionalVAE, {"num_classes": 3})
    batch = fixed_batch(count=4)
    x = batch.inputs
    with pytest.raises(ConfigError, match="needs labelled batches"):
        model.loss_terms(Batch(x))
    model.check_labels(0, 2)  # the data's labels, checked once before training (not in each step)
    with pytest.raises(ConfigError, match=r"labels must lie in \[0, 3\).* from 0 to 5.*--model.num_classes"):
        model.check_labels(0, 5)


# --- IWAE ---


def test_iwae_with_one_sample_is_the_elbo_on_the_same_draw() -> None:
    model = make(IWAE, {"num_samples": 1}, value_range=(-1.0, 1.0))
    batch = fixed_batch((-1.0, 1.0), count=5)
    x = batch.inputs
    torch.manual_seed(3)
    terms = model.train().loss_terms(batch)
    torch.manual_seed(3)
    mu, logvar = model.encoder(x).chunk(2, dim=1)
    std = (0.5 * logvar).exp()
    z = mu + std * torch.randn_like(mu)  # the draw rsample makes with the same seed
    sse = (torch.tanh(model.decoder(z)) - x).square().sum((1, 2, 3))
    log_q = Normal(mu, std).log_prob(z).sum(1)
    log_p = Normal(0.0, 1.0).log_prob(z).sum(1)
    elbo = -sse + log_p - log_q  # one-sample ELBO: log p(x|z) + log p(z) - log q(z|x)
    torch.testing.assert_close(terms["bound"], elbo)
    torch.testing.assert_close(terms["loss"], -elbo)


def test_iwae_one_sample_bound_averages_to_the_analytic_elbo() -> None:
    model = make(IWAE, {"num_samples": 1})
    vae = make(VAE, {})
    vae.load_state_dict(model.state_dict())
    batch = fixed_batch(count=4)
    torch.manual_seed(0)
    with torch.no_grad():
        mean_bound = torch.stack([model.bound(batch, 1) for _ in range(400)]).mean(0)
        neg_elbo = torch.stack([vae.eval().loss_terms(batch)["loss"] for _ in range(400)]).mean(0)
    torch.testing.assert_close(-mean_bound, neg_elbo, rtol=0.01, atol=0.0)


def test_iwae_bound_tightens_as_k_grows() -> None:
    model = make(IWAE, {})
    batch = fixed_batch(count=8)
    torch.manual_seed(0)
    with torch.no_grad():
        bounds = {
            k: torch.stack([model.bound(batch, k) for _ in range(20)]).mean().item() for k in (1, 5, 50)
        }
    assert bounds[1] < bounds[5] < bounds[50]


def test_iwae_refuses_a_kl_weight() -> None:
    with pytest.raises(ConfigError, match="IWAE has no KL weight"):
        IWAE(beta=4.0)
    with pytest.raises(ConfigError, match="num_samples must be at least 1"):
        IWAE(num_samples=0)


# --- VQ-VAE ---


def test_quantizer_picks_the_nearest_code_and_passes_the_gradient_straight_through() -> None:
    torch.manual_seed(0)
    quantizer = VectorQuantizer(codebook_size=6, code_dim=3)
    z = torch.randn(10, 3, requires_grad=True)
    out = quantizer(z)
    nearest = torch.cdist(z.detach(), quantizer.codebook.detach()).argmin(1)
    assert torch.equal(out.indices, nearest)
    torch.testing.assert_close(out.codes, quantizer.codebook[nearest])
    # straight-through: the gradient of the codes reaches z unchanged, and none reaches the codebook
    upstream = torch.randn(10, 3)
    z_grad, codebook_grad = torch.autograd.grad((out.codes * upstream).sum(), (z, quantizer.codebook),
                                                allow_unused=True)  # fmt: skip
    torch.testing.assert_close(z_grad, upstream)
    assert codebook_grad is None
    # commitment ||z - sg(e)||^2 moves z only; the codebook term ||sg(z) - e||^2 moves the codebook only
    expected = (z.detach() - quantizer.codebook.detach()[nearest]).square().sum(1)
    torch.testing.assert_close(out.commitment, expected)
    torch.testing.assert_close(out.codebook, expected)
    (grad_z,) = torch.autograd.grad(out.commitment.sum(), z)
    torch.testing.assert_close(grad_z, 2 * (z.detach() - quantizer.codebook.detach()[nearest]))
    (grad_codebook,) = torch.autograd.grad(out.codebook.sum(), quantizer.codebook)
    assert grad_codebook[nearest.unique()].abs().sum() > 0


def test_quantizer_keeps_float32_under_mixed_precision() -> None:
    torch.manual_seed(0)
    quantizer = VectorQuantizer(codebook_size=64, code_dim=4, ema_decay=0.9)
    z = torch.randn(256, 4)
    expected = torch.cdist(z.double(), quantizer.codebook.double()).argmin(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = quantizer(z, update=True)
    assert torch.equal(out.indices, expected)
    assert quantizer.codebook.dtype == quantizer.ema_code_sum.dtype == torch.float32


def test_vqvae_loss_is_reconstruction_plus_codebook_plus_weighted_commitment() -> None:
    model = make(VQVAE, {"codebook_size": 8, "code_dim": 4, "commitment_cost": 0.25})
    batch = fixed_batch(count=3)
    x = batch.inputs
    terms = model.eval().loss_terms(batch)
    z = model.encoder(x).view(3, 2, 4)  # 8 outputs = 2 vectors of 4 per image
    codebook = model.quantizer.codebook.detach()
    distances = (z[:, :, None] - codebook).square().sum(-1)  # (3, 2, 8)
    codes = codebook[distances.argmin(-1)]
    squared_error = (z - codes).square().sum((1, 2))
    recon = (torch.sigmoid(model.decoder(codes.view(3, 8))) - x).square().sum((1, 2, 3))
    torch.testing.assert_close(terms["commitment"], squared_error)
    torch.testing.assert_close(terms["recon"], recon)
    torch.testing.assert_close(terms["loss"], recon + 1.25 * squared_error)


def test_ema_update_moves_each_code_to_the_average_of_its_vectors() -> None:
    torch.manual_seed(0)
    quantizer = VectorQuantizer(codebook_size=4, code_dim=2, ema_decay=0.5)
    initial = quantizer.codebook.clone()
    z = torch.randn(12, 2)
    indices = quantizer(z, update=True).indices
    code = indices[0].item()
    assigned = z[indices == code]
    count = 0.5 * 1 + 0.5 * len(assigned)  # each code starts with one vector at its initial value
    code_sum = 0.5 * initial[code] + 0.5 * assigned.sum(0)
    counts = 0.5 + 0.5 * torch.bincount(indices, minlength=4).float()
    total = counts.sum()
    smoothed = (count + 1e-5) / (total + 4e-5) * total  # Laplace smoothing
    torch.testing.assert_close(quantizer.codebook[code], code_sum / smoothed)
    # without update (validation) nothing moves
    before = quantizer.codebook.clone()
    quantizer(torch.randn(12, 2))
    assert torch.equal(quantizer.codebook, before)


def test_dead_codes_are_moved_onto_input_vectors() -> None:
    torch.manual_seed(0)
    quantizer = VectorQuantizer(codebook_size=8, code_dim=2, dead_code_threshold=0.5)
    with torch.no_grad():
        quantizer.codebook[1:] = 100.0  # far from every input: never chosen, so dead
    kept = quantizer.codebook[0].detach().clone()
    z = torch.randn(64, 2)
    quantizer(z, update=True)
    moved = quantizer.codebook[1:].detach()
    # each moved code is one of the input vectors
    assert (moved[:, None] - z).abs().sum(-1).min(1).values.max() == 0
    assert torch.equal(quantizer.codebook[0], kept)  # the code in use stays
    # a reset code counts as an average one: it is not reset again at once
    torch.testing.assert_close(quantizer.usage[1:], torch.full((7,), 0.01 * 64 / 8))
    quantizer(z + 1000, update=True)  # far from every code: only the nearest one is chosen
    torch.testing.assert_close(quantizer.codebook[1:], moved)


def test_usage_statistics_perplexity_and_fraction_used() -> None:
    stats = usage_statistics(torch.tensor([5.0, 5.0, 5.0, 5.0, 0.0, 0.0, 0.0, 0.0]))
    assert stats["perplexity"].item() == pytest.approx(4.0)  # 4 codes used equally often
    assert stats["codes_used"].item() == pytest.approx(0.5)
    metric = CodeCounts(codebook_size=8)
    metric.update(torch.tensor([[0, 1], [0, 1]]))
    metric.update(torch.tensor([[0, 0]]))
    stats = metric.compute()  # p = (4/6, 2/6)
    entropy = -(4 / 6 * math.log(4 / 6) + 2 / 6 * math.log(2 / 6))
    assert stats["perplexity"].item() == pytest.approx(math.exp(entropy), rel=1e-5)
    assert stats["codes_used"].item() == pytest.approx(2 / 8)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"code_dim": 3}, "code_dim must be a positive divisor of latent_dim 8"),
        ({"codebook_size": 1}, "codebook_size must be at least 2"),
        ({"ema_decay": 1.0}, r"ema_decay must be in \[0, 1\)"),
        ({"dead_code_threshold": -0.1}, "dead_code_threshold must be in"),
        ({"commitment_cost": -1.0}, "commitment_cost must be >= 0"),
    ],
)
def test_vqvae_refuses_bad_arguments(kwargs, message) -> None:
    with pytest.raises(ConfigError, match=message):
        VQVAE(latent_dim=8, **kwargs)


@pytest.mark.parametrize(
    "cls, kwargs, message",
    [
        (SparseAE, {"sparsity_target": 1.0}, r"sparsity_target must be a mean activation in \(0, 1\)"),
        (SparseAE, {"sparsity_penalty": "l2"}, "sparsity_penalty must be 'kl' or 'l1'"),
        (SparseAE, {"sparsity_weight": -1.0}, "sparsity_weight must be >= 0"),
        (ContractiveAE, {"contractive_weight": -0.1}, "contractive_weight must be >= 0"),
        (VAE, {"kl_warmup_steps": -5}, "kl_warmup_steps must be >= 0"),
        (ConditionalVAE, {"num_classes": 1}, "num_classes must be at least 2"),
    ],
)
def test_bad_variant_arguments_are_refused(cls, kwargs, message) -> None:
    with pytest.raises(ConfigError, match=message):
        cls(**kwargs)


def _quantizer_worker(rank: int, world_size: int, init_file: str, out_dir: str, ema_decay: float,
                      threshold: float) -> None:  # fmt: skip
    """One process of a gloo group: updates a quantizer for 40 steps on data of its own, saves the state."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    torch.manual_seed(0)  # the same initial codebook on every process, as DDP's start-up broadcast makes it
    quantizer = VectorQuantizer(16, 2, ema_decay=ema_decay, dead_code_threshold=threshold)
    for step in range(40):
        quantizer(_rank_data(rank, step), update=True)
    torch.save(quantizer.state_dict(), f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def _rank_data(rank: int, step: int) -> torch.Tensor:
    """Different vectors on each process: shifted and scaled by rank."""
    generator = torch.Generator().manual_seed(1000 * rank + step)
    return torch.randn(32, 2, generator=generator) * (1 + rank) + 2 * rank


@pytest.mark.slow
@pytest.mark.parametrize("ema_decay, threshold", [(0.9, 0.0), (0.9, 0.5), (0.0, 0.5)],
                         ids=["ema", "ema-reset", "gradient-reset"])  # fmt: skip
def test_codebook_stays_identical_on_every_process(ema_decay, threshold, tmp_path) -> None:
    """Two CPU processes (gloo) with different data keep equal codebooks; with EMA alone, the codebook is
    the one a single process gets from both processes' data together."""
    import torch.multiprocessing as mp

    mp.spawn(
        _quantizer_worker, args=(2, str(tmp_path / "init"), str(tmp_path), ema_decay, threshold), nprocs=2
    )
    states = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    for key in states[0]:
        torch.testing.assert_close(states[0][key], states[1][key], rtol=0, atol=0, msg=key)
    torch.manual_seed(0)
    initial = VectorQuantizer(16, 2, ema_decay=ema_decay).codebook.detach()
    assert not torch.allclose(states[0]["codebook"], initial)  # the codebook did move
    if threshold == 0:
        torch.manual_seed(0)
        single = VectorQuantizer(16, 2, ema_decay=ema_decay)
        for step in range(40):
            single(torch.cat([_rank_data(0, step), _rank_data(1, step)]), update=True)
        torch.testing.assert_close(states[0]["codebook"], single.codebook, rtol=1e-5, atol=1e-6)
