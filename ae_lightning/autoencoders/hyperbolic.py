"""The Poincaré ball of curvature -c (c > 0): the points of R^D of norm below 1/sqrt(c), with the metric
lambda_x^2 times the Euclidean one, lambda_x = 2 / (1 - c |x|^2). Möbius addition, the exponential and
logarithmic maps, the distance, parallel transport to and from the origin, and the two normal distributions
of Mathieu et al. (2019): the wrapped normal and the Riemannian normal, with its normaliser and a sampler
that waits for no device. Densities are with respect to the Riemannian volume.

Points and tangent vectors are Euclidean coordinates (..., D). Everything is computed in float32 at least:
under mixed precision the encoder's bfloat16 outputs are promoted first.
"""

import functools
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ae_lightning.autoencoders.svae import log_sphere_area
from ae_lightning.autoencoders.vae import gaussian_log_density
from ae_lightning.nets import first_accepted

#: norms below this are treated as this (a direction of the zero vector is never needed)
MIN_NORM = 1e-15
#: points are kept within (1 - eps) / sqrt(c) of the origin: float32 holds 1 - 1e-5 to about 1e-7, so a point
#: 2 artanh(1 - 1e-5) / sqrt(c) = 12.2 / sqrt(c) from the origin still has its distance to within 0.01
BALL_EPS = {torch.float32: 1e-5, torch.float64: 1e-10}
#: proposals of the Riemannian normal's radius drawn at once: the acceptance rate is above 0.65 for every
#: dimension and scale (lowest for D = 2 and sqrt(c) sigma < 0.1), so all 32 are rejected with probability
#: below 0.35^32 ~ 1e-15; such a draw takes the last proposal (`first_accepted`)
PROPOSALS = 32
#: Newton steps towards the mode of the radius density (from below, where they converge monotonically)
NEWTON_STEPS = 4
#: the normaliser's power series is used where its last term is below e^-30 of its sum (converged)
SERIES_CONVERGED = -30.0


def float32_at_least(x: Tensor) -> Tensor:
    """`x` in float32, or float64 if it is: the geometry is never computed in bfloat16."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _sq_norm(x: Tensor) -> Tensor:
    return x.square().sum(-1, keepdim=True)


def project(x: Tensor, c: float) -> Tensor:
    """`x` (..., D) with norms clamped to (1 - eps) / sqrt(c): on the ball, as far out as its dtype holds."""
    limit = (1 - BALL_EPS.get(x.dtype, 1e-5)) / math.sqrt(c)
    norm = x.norm(dim=-1, keepdim=True).clamp_min(MIN_NORM)
    return torch.where(norm > limit, x * (limit / norm), x)


def conformal_factor(x: Tensor, c: float) -> Tensor:
    """lambda_x = 2 / (1 - c |x|^2) of points (..., D) -> (..., 1)."""
    return 2 / (1 - c * _sq_norm(x)).clamp_min(MIN_NORM)


def mobius_add(x: Tensor, y: Tensor, c: float) -> Tensor:
    """x (+) y, the Möbius addition (the ball's translation; not commutative), (..., D) broadcast."""
    xy, x2, y2 = (x * y).sum(-1, keepdim=True), _sq_norm(x), _sq_norm(y)
    numerator = (1 + 2 * c * xy + c * y2) * x + (1 - c * x2) * y
    return project(numerator / (1 + 2 * c * xy + c**2 * x2 * y2).clamp_min(MIN_NORM), c)


def exp_map0(v: Tensor, c: float) -> Tensor:
    """exp_0(v) = tanh(sqrt(c) |v|) v / (sqrt(c) |v|): a tangent vector at the origin (..., D) to the ball."""
    norm = v.norm(dim=-1, keepdim=True).clamp_min(MIN_NORM) * math.sqrt(c)
    return project(torch.tanh(norm) * v / norm, c)


def log_map0(z: Tensor, c: float) -> Tensor:
    """log_0(z) = artanh(sqrt(c) |z|) z / (sqrt(c) |z|), the inverse of `exp_map0`: (..., D) -> (..., D)."""
    z = project(z, c)
    norm = z.norm(dim=-1, keepdim=True).clamp_min(MIN_NORM) * math.sqrt(c)
    return torch.atanh(norm) * z / norm


def exp_map(x: Tensor, v: Tensor, c: float) -> Tensor:
    """exp_x(v) = x (+) tanh(sqrt(c) lambda_x |v| / 2) v / (sqrt(c) |v|): tangent vectors at x to the ball."""
    norm = v.norm(dim=-1, keepdim=True).clamp_min(MIN_NORM) * math.sqrt(c)
    return mobius_add(x, torch.tanh(conformal_factor(x, c) * norm / 2) * v / norm, c)


def distance(x: Tensor, y: Tensor, c: float) -> Tensor:
    """d_c(x, y) = arcosh(1 + 2c |x - y|^2 / ((1 - c|x|^2)(1 - c|y|^2))) / sqrt(c), (..., D) -> (...).

    This form of the distance keeps its digits for nearby points (x - y is taken directly)."""
    gap = 2 * c * (x - y).square().sum(-1)
    scale = ((1 - c * x.square().sum(-1)) * (1 - c * y.square().sum(-1))).clamp_min(MIN_NORM)
    delta = (gap / scale).clamp_min(MIN_NORM**2)  # arcosh has an infinite slope at 1
    return torch.log1p(delta + torch.sqrt(delta * (delta + 2))) / math.sqrt(c)


def log_map(x: Tensor, z: Tensor, c: float) -> Tensor:
    """log_x(z), the tangent vector at x of Riemannian norm d(x, z) towards (-x) (+) z: (..., D)."""
    direction = F.normalize(mobius_add(-x, z, c), dim=-1, eps=MIN_NORM)
    return (distance(x, z, c)[..., None] / conformal_factor(x, c)) * direction


def transport_from_origin(x: Tensor, v: Tensor, c: float) -> Tensor:
    """Parallel transport of v from the origin to x: (lambda_0 / lambda_x) v (the gyration gyr[x, 0] is the
    identity, so only the scale changes)."""
    return v * (2 / conformal_factor(x, c))


def transport_to_origin(x: Tensor, v: Tensor, c: float) -> Tensor:
    """Parallel transport of v from x to the origin: (lambda_x / lambda_0) v."""
    return v * (conformal_factor(x, c) / 2)


def wrap(mu: Tensor, u: Tensor, c: float) -> Tensor:
    """exp_mu(PT_{0->mu}(u / lambda_0)) = mu (+) exp_0(u / 2): the point reached from mu along the tangent
    vector whose coordinates at the origin, in an orthonormal frame, are u (..., D); d(mu, z) = |u|."""
    return mobius_add(mu, exp_map0(u / 2, c), c)


def unwrap(mu: Tensor, z: Tensor, c: float) -> Tensor:
    """The inverse of `wrap`: lambda_0 PT_{mu->0}(log_mu(z)) = d(mu, z) w / |w| with w = (-mu) (+) z."""
    direction = F.normalize(mobius_add(-mu, z, c), dim=-1, eps=MIN_NORM)
    return distance(mu, z, c)[..., None] * direction


def log_sinh(x: Tensor) -> Tensor:
    """log sinh(x) for x > 0, without overflow (large x) or cancellation (small x)."""
    return x + torch.log(-torch.expm1(-2 * x)) - math.log(2)


def log_sinh_ratio(x: Tensor) -> Tensor:
    """log(sinh(x) / x) for x >= 0, its series x^2/6 - x^4/180 near 0 (where the quotient is 0/0)."""
    small = x < 1e-2
    safe = torch.where(small, 1.0, x)
    return torch.where(small, x.square() / 6 - x.pow(4) / 180, log_sinh(safe) - safe.log())


# --- the wrapped normal ---


def wrapped_normal_sample(mu: Tensor, sigma: Tensor | float, normal: Tensor, c: float) -> Tensor:
    """Draws of N_W(mu, diag sigma^2) from standard normals (..., D): u = sigma * normal at the origin,
    transported to mu and mapped by exp_mu (`wrap`); reparameterised in mu and sigma."""
    return wrap(mu, sigma * normal, c)


def wrapped_normal_log_density(z: Tensor, mu: Tensor, sigma: Tensor | float, c: float) -> Tensor:
    """log N_W(z; mu, diag sigma^2) = log N(u; 0, sigma^2) + (D-1) log(sqrt(c) d / sinh(sqrt(c) d)), with
    u = `unwrap`(mu, z) and d = d(mu, z) = |u| (Mathieu et al., eq. 5): (..., D) -> (...)."""
    u = unwrap(mu, z, c)
    log_sigma = sigma.log() if isinstance(sigma, Tensor) else math.log(sigma)
    gaussian = gaussian_log_density(u, 0.0, 2 * log_sigma).sum(-1)
    return gaussian - (z.shape[-1] - 1) * log_sinh_ratio(math.sqrt(c) * u.norm(dim=-1))


# --- the Riemannian normal: density exp(-d(mu, z)^2 / (2 sigma^2)) / Z(sigma) ---


@functools.lru_cache
def normalizer_constants(dim: int) -> tuple[Tensor, Tensor]:
    """The constants of log J(s) = log int_0^inf exp(-t^2/2) sinh(s t)^(D-1) dt, float64 on the CPU: the
    closed form's (3, K) rows (log |coefficient|, sign, multiple of s) and the series' (2, terms) rows
    (log coefficient, power of s). Exact integer arithmetic: the coefficients of sinh^n cancel."""
    n = dim - 1
    # the closed form, the paper's sum over k of (-1)^k C(n, k) e^{b^2/2} (1 + erf(b / sqrt 2)), b = (n-2k) s,
    # with its terms k and n - k paired: for even n their erfs cancel, for odd n they add to 2 erf(b / sqrt 2)
    rows = []
    for k in range(n // 2 + 1):
        log_coefficient = math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
        log_coefficient += -math.log(2) if 2 * k == n else 0.0  # the unpaired middle term, b = 0
        rows.append((log_coefficient + 0.5 * math.log(2 * math.pi) - n * math.log(2), (-1.0) ** k, n - 2 * k))
    # the series: sinh(x)^n = sum_j a_j x^(n+2j), all a_j > 0, and int t^p e^{-t^2/2} = 2^((p-1)/2) G((p+1)/2)
    terms = []
    for j in range(32 + 2 * n):  # enough that the closed form is used only where its sum does not cancel
        p = n + 2 * j
        numerator = sum((-1) ** k * math.comb(n, k) * (n - 2 * k) ** p for k in range(n + 1))  # 0^0 = 1
        log_a = math.log(numerator) - n * math.log(2) - math.lgamma(p + 1) if numerator > 0 else -math.inf
        terms.append((log_a + 0.5 * (p - 1) * math.log(2) + math.lgamma(0.5 * (p + 1)), p))
    closed = torch.tensor(rows, dtype=torch.float64).T.contiguous()
    return closed, torch.tensor(terms, dtype=torch.float64).T.contiguous()


def riemannian_log_normalizer(
    sigma: Tensor, dim: int, c: float, constants: tuple[Tensor, Tensor] | None = None
) -> Tensor:
    """log Z(sigma) of the Riemannian normal on the D-ball, shaped as sigma, float32 at least.

    Z = area(S^{D-1}) c^{-(D-1)/2} sigma J(sqrt(c) sigma). J is the paper's closed form (a sum of D terms of
    alternating sign, with erf), summed in log space, where it is accurate; where its terms cancel (small
    sqrt(c) sigma: J ~ s^{D-1} from terms ~ 1) it is the series of positive terms, which converges there.
    `constants`: `normalizer_constants(dim)`, on sigma's device (a model keeps them as buffers)."""
    sigma = float32_at_least(sigma)
    closed, series = normalizer_constants(dim) if constants is None else constants
    # .to(device) is free where they are already there (the model's buffers): only the dtype is converted
    closed, series = (part.to(device=sigma.device).to(sigma.dtype) for part in (closed, series))
    s = math.sqrt(c) * sigma[..., None]
    b = closed[2] * s
    log_terms = closed[0] + b.square() / 2
    if dim % 2 == 0:
        log_terms = log_terms + torch.log(torch.erf(b / math.sqrt(2)))
    top = log_terms.max(-1, keepdim=True).values
    total = (closed[1] * (log_terms - top).exp()).sum(-1)
    closed_form = top[..., 0] + total.clamp_min(torch.finfo(total.dtype).tiny).log()
    series_terms = series[0] + series[1] * s.log()
    series_sum = series_terms.logsumexp(-1)
    converged = series_terms[..., -1] - series_sum < SERIES_CONVERGED
    log_j = torch.where(converged, series_sum, closed_form)
    return log_sphere_area(dim) - 0.5 * (dim - 1) * math.log(c) + sigma.log() + log_j


def riemannian_normal_log_density(
    z: Tensor, mu: Tensor, sigma: Tensor, c: float, constants: tuple[Tensor, Tensor] | None = None
) -> Tensor:
    """log N_R(z; mu, sigma^2) = -d(mu, z)^2 / (2 sigma^2) - log Z(sigma): z, mu (..., D), sigma (...)."""
    sigma = float32_at_least(sigma)
    log_z = riemannian_log_normalizer(sigma, z.shape[-1], c, constants)
    return -distance(mu, z, c).square() / (2 * sigma.square()) - log_z


class RiemannianNoise(NamedTuple):
    """The randomness of Riemannian normal draws of shape S: `PROPOSALS` radius proposals each."""

    normal: Tensor  #: (P, *S) standard normals: the proposals
    uniform: Tensor  #: (P, *S) uniforms of their acceptance tests
    direction: Tensor  #: (*S, D) standard normals: the direction, uniform on the sphere once normalised


def riemannian_noise(
    shape: tuple[int, ...],
    dim: int,
    proposals: int = PROPOSALS,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> RiemannianNoise:
    """The noise of Riemannian normal draws of `shape` on the D-ball, on `device`; `generator` makes it
    repeatable (drawn where the generator lives, then moved)."""
    where = generator.device if generator is not None else device
    parts = (
        torch.randn(proposals, *shape, generator=generator, device=where),
        torch.rand(proposals, *shape, generator=generator, device=where),
        torch.randn(*shape, dim, generator=generator, device=where),
    )
    return RiemannianNoise(*(part.to(device) if device is not None else part for part in parts))


def _inverse_sinh_square(x: Tensor) -> Tensor:
    """1 / sinh(x)^2 for x > 0, with a finite gradient where sinh overflows."""
    return 4 * torch.exp(-2 * x) / torch.expm1(-2 * x).square()


def radius_proposals(sigma: Tensor, dim: int, c: float, normal: Tensor) -> tuple[Tensor, Tensor]:
    """Proposals of the radius r = d(mu, z), whose density is proportional to
    exp(-r^2 / (2 sigma^2)) sinh(sqrt(c) r)^(D-1) on r > 0, and the log of their acceptance probabilities.

    log f is concave with curvature below -1/sigma^2, so at any m it lies under its tangent minus
    (r - m)^2 / (2 sigma^2): a normal envelope of variance sigma^2 centred at m + sigma^2 (log f)'(m). With m
    near the mode (Newton steps from below) it accepts more than 65% (see `PROPOSALS`). sigma (...) and
    normal (P, ...) broadcast; returns (proposals, log acceptance), each (P, ...), -inf where r <= 0."""
    n, a = dim - 1, math.sqrt(c)
    if n == 0:  # the density is the half normal itself
        proposals = (sigma * normal).abs()
        return proposals, torch.zeros_like(proposals)
    variance = sigma.square()
    mode = torch.maximum(sigma * math.sqrt(n), n * a * variance)  # below the mode: r = n a s^2 coth(a r)
    for _ in range(NEWTON_STEPS):
        slope = -mode / variance + n * a / torch.tanh(a * mode)
        mode = mode + slope / (1 / variance + n * a**2 * _inverse_sinh_square(a * mode))
    proposals = n * a * variance / torch.tanh(a * mode) + sigma * normal
    r = proposals.clamp_min(MIN_NORM)
    # log f(r) minus the envelope: the Gaussian parts cancel exactly, leaving the sinh term's tangent gap
    gap = log_sinh(a * r) - log_sinh(a * mode) - a / torch.tanh(a * mode) * (r - mode)
    return proposals, torch.where(proposals > 0, n * gap, -math.inf)


def riemannian_normal_sample(mu: Tensor, sigma: Tensor, noise: RiemannianNoise, c: float) -> Tensor:
    """Draws of N_R(mu, sigma^2) (*S, D) for mu (..., D) and sigma (...) that broadcast with the noise's S:
    z = `wrap`(mu, r alpha), r the first accepted radius proposal (picked on the device, no loop), alpha
    uniform on the sphere; so d(mu, z) = r.

    Reparameterised: the gradient in mu is exact; in sigma it flows through the accepted proposal
    r = centre(sigma) + sigma eps (Naesseth et al.'s g_rep), the correction for the acceptance's dependence
    on sigma left out. That correction vanishes in both limits, sqrt(c) sigma -> 0 (sigma times a chi
    variable) and large sqrt(c) sigma (a normal of standard deviation sigma): there the accept test does not
    depend on sigma for fixed noise."""
    mu, sigma = float32_at_least(mu), float32_at_least(sigma)
    normal, uniform, direction = (part.to(mu.dtype) for part in noise)
    proposals, log_accept = radius_proposals(sigma, mu.shape[-1], c, normal)
    with torch.no_grad():  # the acceptance is a choice, not differentiated
        accepted = uniform.log() <= log_accept
    shape = accepted.shape
    radius, _ = first_accepted(proposals.expand(shape).reshape(shape[0], -1), accepted.reshape(shape[0], -1))
    radius = radius.view(shape[1:]).clamp_min(MIN_NORM)
    return wrap(mu, radius[..., None] * F.normalize(direction, dim=-1, eps=MIN_NORM), c)
