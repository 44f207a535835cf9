"""The models of pythae's zoo written here, each objective against a hand computation on tiny tensors."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from ae_lightning.autoencoders import (
    CIWAE,
    IWAE,
    MIWAE,
    MSSSIMVAE,
    RAE,
    WAE,
    BetaTCVAE,
    DisentangledBetaVAE,
    InfoVAE,
    VampVAE,
)
from ae_lightning.autoencoders.disentangled import aggregate_log_densities, log_importance_weights
from ae_lightning.autoencoders.mmd import IMQ_SCALES, kernel_matrix, mmd
from ae_lightning.autoencoders.similarity import ms_ssim, ms_ssim_scales, ssim_parts
from ae_lightning.autoencoders.vae import gaussian_kl
from ae_lightning.autoencoders.vamp import mixture_log_density
from ae_lightning.errors import ConfigError
from tests.test_autoencoders import fixed_batch, make

# --- the MMD of WAE and InfoVAE ---


@pytest.mark.parametrize("kernel", ["imq", "rbf"])
def test_mmd_is_the_explicit_kernel_sums(kernel: str) -> None:
    torch.manual_seed(0)
    a, b = torch.randn(5, 3) + 0.5, torch.randn(5, 3)
    base = 2 * 3 * 1.5**2

    def k(x: torch.Tensor, y: torch.Tensor) -> float:
        d2 = float((x - y).square().sum())
        if kernel == "rbf":
            return math.exp(-d2 / base)
        return sum(base * s / (base * s + d2) for s in IMQ_SCALES)

    n = 5
    within = sum(k(a[i], a[j]) + k(b[i], b[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    across = sum(k(a[i], b[j]) for i in range(n) for j in range(n)) / n**2
    assert mmd(a, b, kernel, bandwidth=1.5).item() == pytest.approx(within - 2 * across, rel=1e-4, abs=1e-6)
    assert kernel_matrix(a, a, kernel, 1.5).diagonal().tolist() == pytest.approx([k(a[0], a[0])] * 5)


def test_mmd_tells_the_prior_from_a_shifted_cloud_and_has_a_gradient_at_coinciding_codes() -> None:
    torch.manual_seed(0)
    prior = torch.randn(200, 4)
    assert abs(mmd(torch.randn(200, 4), prior, "imq").item()) < 0.02
    assert mmd(torch.randn(200, 4) + 2, prior, "imq").item() > 0.5
    codes = torch.zeros(3, 4, requires_grad=True)  # every distance within the set is 0
    (gradient,) = torch.autograd.grad(mmd(codes, prior[:3], "rbf"), codes)
    assert torch.isfinite(gradient).all()


def test_wae_and_infovae_losses_are_their_weighted_terms() -> None:
    batch = fixed_batch(count=6)
    wae = make(WAE, {"reg_weight": 7.0}).train()
    terms = wae.loss_terms(batch)
    torch.testing.assert_close(terms["loss"], terms["recon"] + 7.0 * terms["mmd"])
    assert terms["mmd"].unique().numel() == 1  # a batch statistic
    info = make(InfoVAE, {"alpha": 0.25, "lbd": 10.0}).train()
    terms = info.loss_terms(batch)
    torch.testing.assert_close(terms["loss"], terms["recon"] + 0.75 * terms["kl"] + 9.25 * terms["mmd"])
    assert info.training_metrics() == {"kl_weight": 0.75}


# --- RAE ---


def test_rae_penalties_are_the_decoder_weight_norm_and_the_gradient_of_its_summed_output() -> None:
    batch = fixed_batch(count=3)
    l2 = make(RAE, {"regularization": "l2", "embedding_weight": 0.5, "reg_weight": 0.1})
    terms = l2.loss_terms(batch)
    weights = sum(p.square().sum() for p in l2.decoder.parameters())
    torch.testing.assert_close(terms["decoder_reg"], weights.expand(3))
    z = l2.code(batch.inputs)
    torch.testing.assert_close(terms["embedding"], 0.5 * z.square().sum(1))
    torch.testing.assert_close(terms["loss"], terms["recon"] + 0.5 * terms["embedding"] + 0.1 * weights)
    gp = make(RAE, {"regularization": "gp"})
    z = gp.code(batch.inputs).detach()
    jacobians = [torch.autograd.functional.jacobian(lambda v: gp.decode(v[None])[0], row) for row in z]
    expected = torch.stack([j.flatten(0, -2).sum(0).square().sum() for j in jacobians])  # |J^T 1|^2
    for mode, grad in ((gp.train, torch.enable_grad), (gp.eval, torch.inference_mode)):
        with grad():
            torch.testing.assert_close(
                mode().loss_terms(batch)["decoder_reg"], expected, rtol=1e-4, atol=1e-6
            )


# --- the capacity-controlled beta-VAE and the beta-TC-VAE ---


def test_disentangled_beta_vae_holds_the_kl_near_a_rising_capacity() -> None:
    model = make(DisentangledBetaVAE, {"beta": 100.0, "capacity": 20.0, "capacity_steps": 200}).train()
    batch = fixed_batch(count=4)
    for step, capacity in ((0, 0.0), (50, 5.0), (200, 20.0), (900, 20.0)):
        model.step = step
        assert model.current_capacity() == capacity and model.training_metrics() == {"capacity": capacity}
    model.step = 50
    terms = model.loss_terms(batch)
    torch.testing.assert_close(terms["loss"], terms["recon"] + 100.0 * (terms["kl"] - 5.0).abs())
    assert model.eval().current_capacity() == 20.0  # evaluation: the final objective


def _correlated_posteriors(rho: float, count: int, sigma: float) -> tuple[torch.Tensor, ...]:
    """Posteriors N(x_j, sigma^2 I) around points x_j of a 2-D Gaussian with correlation rho, and a draw of
    each: the aggregate posterior is N(0, [[1 + s2, rho], [rho, 1 + s2]]), whose total correlation is
    -log(1 - r^2) / 2 with r = rho / (1 + s2)."""
    generator = torch.Generator().manual_seed(0)
    points = torch.randn(count, 2, generator=generator, dtype=torch.float64)
    points[:, 1] = rho * points[:, 0] + math.sqrt(1 - rho**2) * points[:, 1]
    logvar = torch.full_like(points, 2 * math.log(sigma))
    z = points + sigma * torch.randn(count, 2, generator=generator, dtype=torch.float64)
    return z, points, logvar


@pytest.mark.parametrize("estimator", ["mss", "mws"])
def test_the_tc_estimators_recover_the_total_correlation_of_a_gaussian(estimator: str) -> None:
    rho, sigma, count = 0.8, 0.3, 3000
    z, mu, logvar = _correlated_posteriors(rho, count, sigma)
    joint, marginals = aggregate_log_densities(z, mu, logvar, dataset_size=count, estimator=estimator)
    tc = (joint - marginals).double().mean().item()
    if estimator == "mws":  # the paper's 1 / (N B) weighting raises it by (D - 1) log N
        tc -= (2 - 1) * math.log(count)
    r = rho / (1 + sigma**2)
    assert tc == pytest.approx(-0.5 * math.log(1 - r**2), abs=0.03)


def test_stratified_weights_sum_to_one_per_row() -> None:
    weights = log_importance_weights(6, 100, torch.device("cpu")).exp()
    torch.testing.assert_close(weights.sum(1), torch.ones(6))
    assert weights[0, 0] == pytest.approx(1 / 100) and weights[0, 1] == pytest.approx((100 - 5) / 500)


def test_beta_tc_vae_terms_add_up_to_the_one_draw_kl_and_its_loss_weighs_them() -> None:
    model = make(BetaTCVAE, {"alpha": 2.0, "beta": 3.0, "gamma": 0.5, "dataset_size": 500})
    terms = model.train().loss_terms(fixed_batch(count=5))
    parts = terms["mutual_info"] + terms["total_correlation"] + terms["dimension_kl"]
    weighted = 2.0 * terms["mutual_info"] + 3.0 * terms["total_correlation"] + 0.5 * terms["dimension_kl"]
    torch.testing.assert_close(terms["loss"], terms["recon"] + weighted)
    # log q(z|x) - log p(z) at the draw averages to the analytic KL
    torch.manual_seed(0)
    names = ("mutual_info", "total_correlation", "dimension_kl")
    with torch.no_grad():
        draws = [model.loss_terms(fixed_batch(count=5)) for _ in range(300)]
    mean = torch.stack([sum(terms[name] for name in names) for terms in draws]).mean(0)
    torch.testing.assert_close(mean, terms["kl"].detach(), rtol=0.05, atol=0.3)
    assert torch.isfinite(parts).all()


def test_beta_tc_vae_without_a_dataset_size_says_where_it_comes_from() -> None:
    with pytest.raises(ConfigError, match="needs the number of training images: pass dataset_size"):
        make(BetaTCVAE, {}).loss_terms(fixed_batch(count=3))


# --- VampPrior ---


def test_vamp_prior_is_the_mixture_of_the_pseudo_inputs_posteriors() -> None:
    model = make(VampVAE, {"num_components": 4})
    means, logvars = model.prior_components()
    mixture = MixtureSameFamily(
        Categorical(torch.ones(4)), Independent(Normal(means, (0.5 * logvars).exp()), 1)
    )
    z = torch.randn(2, 3, 8)
    torch.testing.assert_close(model.log_prior(z), mixture.log_prob(z), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(
        mixture_log_density(z, means, logvars), mixture.log_prob(z), rtol=1e-5, atol=1e-4
    )
    with torch.no_grad():
        samples = model.prior_noise(4000, torch.Generator().manual_seed(0))
    # the draws follow the mixture: their mean is the components' mean
    torch.testing.assert_close(samples.mean(0), means.mean(0), atol=0.1, rtol=0)


def test_vamp_kl_is_the_one_draw_estimate_and_the_nll_uses_the_mixture() -> None:
    model = make(VampVAE, {"num_components": 3})
    batch = fixed_batch(count=4)
    torch.manual_seed(5)
    terms = model.train().loss_terms(batch)
    torch.manual_seed(5)
    mu, logvar = model.encode(batch.inputs)
    z = mu + (0.5 * logvar).exp() * torch.randn_like(mu)
    expected = Normal(mu, (0.5 * logvar).exp()).log_prob(z).sum(1) - model.log_prior(z)
    torch.testing.assert_close(terms["kl"], expected)
    assert "kl_dim/0" not in model.eval().loss_terms(batch)


# --- MIWAE and CIWAE ---


def test_miwae_with_one_estimate_is_the_iwae_and_ciwae_spans_elbo_to_iwae() -> None:
    batch = fixed_batch(count=4)
    iwae, miwae = make(IWAE, {"num_samples": 3}), make(MIWAE, {"num_samples": 3, "num_estimates": 1})
    miwae.load_state_dict(iwae.state_dict())
    for model in (iwae, miwae):
        torch.manual_seed(2)
        model.bound_terms = model.loss_terms(batch)
    torch.testing.assert_close(miwae.bound_terms["loss"], iwae.bound_terms["loss"])
    # M = 2, K = 3: the mean of the bounds of draws 0-2 and 3-5
    two = make(MIWAE, {"num_samples": 3, "num_estimates": 2})
    two.load_state_dict(iwae.state_dict())
    torch.manual_seed(2)
    log_weights = two.log_weights(batch, 6, chunk_size=6)[0]
    torch.manual_seed(2)
    expected = (log_weights[:3].logsumexp(0) + log_weights[3:].logsumexp(0)) / 2 - math.log(3)
    torch.testing.assert_close(two.loss_terms(batch)["bound"], expected)
    for weight in (0.0, 1.0, 0.3):
        ciwae = make(CIWAE, {"num_samples": 3, "elbo_weight": weight})
        torch.manual_seed(2)
        terms = ciwae.loss_terms(batch)
        torch.testing.assert_close(-terms["loss"], weight * terms["elbo"] + (1 - weight) * terms["bound"])
        assert (terms["elbo"] <= terms["bound"] + 1e-4).all()  # Jensen


# --- MS-SSIM ---


def test_the_ssim_map_is_torchmetrics_at_every_valid_window_position() -> None:
    from torchmetrics.functional.image import structural_similarity_index_measure

    torch.manual_seed(0)
    x = torch.rand(3, 2, 30, 26)
    y = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    luminance, contrast_structure = ssim_parts(y, x, data_range=1.0, kernel_size=11)
    _, full = structural_similarity_index_measure(
        y, x, data_range=1.0, return_full_image=True, reduction="none"
    )
    # torchmetrics pads by reflection and keeps the full size; its interior is the valid positions'
    torch.testing.assert_close(luminance * contrast_structure, full[..., 5:-5, 5:-5], atol=2e-5, rtol=0)


def test_ms_ssim_is_the_weighted_product_over_the_scales() -> None:
    torch.manual_seed(1)
    x = torch.rand(2, 1, 28, 28)
    y = (x + 0.3 * torch.randn_like(x)).clamp(0, 1)
    weights = torch.tensor([0.0448, 0.2856, 0.3001]) / sum([0.0448, 0.2856, 0.3001])
    expected, a, b = torch.ones(2), x, y
    for scale in range(3):
        luminance, contrast_structure = ssim_parts(b, a, 1.0, 7)
        term = (luminance * contrast_structure if scale == 2 else contrast_structure).mean((1, 2, 3))
        expected = expected * term ** weights[scale]
        a, b = F.avg_pool2d(a, 2), F.avg_pool2d(b, 2)
    torch.testing.assert_close(ms_ssim(y, x, (0.0, 1.0), 7, 3), expected)
    torch.testing.assert_close(ms_ssim(x, x, (0.0, 1.0), 7, 3), torch.ones(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ms_ssim(y, x, (0.0, 1.0), 7, 3).dtype == torch.float32


def test_msssim_vae_counts_the_dissimilarity_per_pixel_and_takes_the_scales_that_fit() -> None:
    assert ms_ssim_scales((1, 28, 28), 7) == 3 and ms_ssim_scales((1, 28, 28), 11) == 2
    assert ms_ssim_scales((3, 64, 64), 11) == 3 and ms_ssim_scales((3, 256, 256), 11) == 5
    model = make(MSSSIMVAE, {})
    x = fixed_batch(count=2).inputs
    decoder_output = torch.logit(x.clamp(1e-4, 1 - 1e-4))  # decodes to the image itself
    torch.testing.assert_close(
        model.reconstruction_loss(decoder_output, x), torch.zeros(2), atol=1e-3, rtol=0
    )
    assert (model.reconstruction_loss(torch.zeros_like(x), x) > 100).all()
    assert not model.reports_likelihood()


@pytest.mark.parametrize(
    "cls, kwargs, message",
    [
        (WAE, {"kernel": "cosine"}, "kernel must be 'imq'"),
        (WAE, {"kernel_bandwidth": 0.0}, "kernel_bandwidth must be > 0"),
        (WAE, {"reg_weight": -1.0}, "reg_weight must be >= 0"),
        (InfoVAE, {"alpha": 0.0, "lbd": 1e-3}, "MMD's weight and must be >= 0.*raise lbd"),
        (InfoVAE, {"alpha": 1.5}, "alpha must be at most 1"),
        (InfoVAE, {"beta": 2.0}, "leave beta at 1"),
        (RAE, {"regularization": "l1"}, "regularization must be 'l2'"),
        (RAE, {"embedding_weight": -1.0}, "must be >= 0"),
        (DisentangledBetaVAE, {"capacity": -1.0}, "capacity must be >= 0 nats"),
        (DisentangledBetaVAE, {"capacity_steps": -1}, "capacity_steps must be >= 0"),
        (DisentangledBetaVAE, {"kl_warmup_steps": 10}, "no KL warm-up.*leave kl_warmup_steps at 0"),
        (BetaTCVAE, {"estimator": "jackknife"}, "estimator must be 'mss'"),
        (BetaTCVAE, {"dataset_size": 0}, "dataset_size must be the number of training images"),
        (BetaTCVAE, {"gamma": -1.0}, "alpha and gamma must be >= 0"),
        (VampVAE, {"num_components": 0}, "num_components must be at least 1"),
        (MIWAE, {"num_estimates": 0}, "num_estimates must be at least 1"),
        (CIWAE, {"elbo_weight": 1.5}, r"elbo_weight must lie in \[0, 1\]"),
        (MSSSIMVAE, {"image_shape": (10,)}, "MS-SSIM compares images"),
        (MSSSIMVAE, {"image_shape": (1, 6, 6)}, "too small for MS-SSIM"),
        (MSSSIMVAE, {"ssim_kernel_size": 4}, "ssim_kernel_size must be an odd number"),
        (MSSSIMVAE, {"ssim_scales": 6}, "ssim_scales must be 1 to 5"),
    ],
)
def test_bad_zoo_arguments_are_refused_in_one_line(cls, kwargs, message) -> None:
    with pytest.raises(ConfigError, match=message) as refused:
        cls(**kwargs)
    assert "\n" not in str(refused.value)


def test_gaussian_kl_of_vamp_prior_free_models_is_unchanged() -> None:
    """The VAE's KL hooks (`kl_divergence`, `log_prior`) keep the closed form for the N(0, I) prior."""
    model = make(InfoVAE, {})
    mu, logvar = torch.randn(3, 8), torch.randn(3, 8)
    torch.testing.assert_close(
        model.kl_divergence(mu, logvar, torch.randn(5, 3, 8)), gaussian_kl(mu, logvar).expand(5, 3)
    )


def test_beta_tc_vae_takes_the_training_split_size_from_the_data(data_dir, tmp_path) -> None:
    from lightning.pytorch import Trainer

    from ae_lightning.data import MNISTDataModule
    from ae_lightning.models import BetaTCVAE as Module
    from tests.conftest import NUM_TRAIN, VAL_SIZE

    module = Module(latent_dim=4, hidden_dims=[16])
    trainer = Trainer(default_root_dir=tmp_path, logger=False, enable_checkpointing=False, max_steps=1,
                      limit_val_batches=0, accelerator="cpu", enable_progress_bar=False,
                      enable_model_summary=False)  # fmt: skip
    trainer.fit(module, MNISTDataModule(data_dir=str(data_dir), val_size=VAL_SIZE, batch_size=16))
    assert module.model.dataset_size == NUM_TRAIN - VAL_SIZE
    given = Module(latent_dim=4, hidden_dims=[16], dataset_size=1234)
    Trainer(logger=False, enable_checkpointing=False, max_steps=1, limit_val_batches=0, accelerator="cpu",
            enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path).fit(
        given, MNISTDataModule(data_dir=str(data_dir), val_size=VAL_SIZE, batch_size=16))  # fmt: skip
    assert given.model.dataset_size == 1234  # an explicit N is kept
