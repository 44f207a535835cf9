"""log I_v(kappa), the modified Bessel function of the first kind of real order v >= 0, and the log of the
ratio I_{v+1}(kappa) / I_v(kappa), in plain tensor ops: no host syncs, no branches on values, exportable.

torch has I_0 and I_1 only. Here the uniform asymptotic expansion of Debye (DLMF 10.41.3), accurate to
~1e-11 for every kappa > 0 once the order is >= `DEBYE_MIN_ORDER`, gives the order mu = v + n (n the least
whole number that reaches it), and n steps of the backward recurrence I_{w-1} = I_{w+1} + (2w / kappa) I_w,
stable for I (an error shrinks by the squared ratio at each step), bring it down to v. Below kappa = 2 a
small order takes the power series instead (exact there, where the expansion's error would show in
log I_0(kappa) ~ kappa^2 / 4). What is carried is log(ratio) and the reduced log I_v(kappa), log I_v without
its leading factors at small and large kappa (`log_bessel_reduced`), so nothing overflows and nothing of
size kappa or log(kappa) cancels: the vMF KL keeps ~6 digits in float32 from kappa ~ 1 to 1e5. Its
derivative in kappa, ~ (D - 1) / (2 kappa) for large kappa, is a difference of terms ~ 1 / kappa: float32
keeps ~5 digits of it up to kappa ~ 100, ~2 at 1e3 to 1e4 (float64: 10 digits throughout).
"""

import math
from fractions import Fraction
from functools import cache
from typing import Any

import torch
from torch import Tensor

#: the least order at which the expansion is used; below it the recurrence comes down from there
DEBYE_MIN_ORDER = 16
#: terms u_1 .. u_K of the expansion: its error is ~ max|u_{K+1}| / order^(K+1) < 1e-11
DEBYE_TERMS = 8
#: the power series for kappa below `SERIES_MAX_KAPPA`, terms 1 .. `SERIES_TERMS` (error < (1/12!)^2)
SERIES_MAX_KAPPA, SERIES_TERMS = 2.0, 12


@cache
def _debye_polynomials(count: int) -> tuple[tuple[Fraction, ...], ...]:
    """Coefficients (by power of t) of the Debye polynomials u_0 .. u_count, exactly, by the recurrence
    u_{k+1} = t^2 (1 - t^2) u_k' / 2 + (1/8) int_0^t (1 - 5 s^2) u_k(s) ds (DLMF 10.41.10)."""
    polynomials = [[Fraction(1)]]
    for _ in range(count):
        last = polynomials[-1]
        new = [Fraction(0)] * (len(last) + 3)
        for power, coefficient in enumerate(last):
            new[power + 1] += power * coefficient / 2 + coefficient / (8 * (power + 1))
            new[power + 3] -= power * coefficient / 2 + 5 * coefficient / (8 * (power + 3))
        polynomials.append(new)
    return tuple(tuple(polynomial) for polynomial in polynomials)


@cache
def _debye_coefficients(order: float) -> tuple[float, ...]:
    """Coefficients (by power of t) of sum_{k=1..K} u_k(t) / order^k: one polynomial for the whole series
    (its coefficients stay below 0.02 for order >= 16, so Horner's rule loses nothing)."""
    combined = [0.0] * (3 * DEBYE_TERMS + 1)
    for k, polynomial in enumerate(_debye_polynomials(DEBYE_TERMS)[1:], start=1):
        for power, coefficient in enumerate(polynomial):
            combined[power] += float(coefficient) / order**k
    return tuple(combined)


@cache
def _series_coefficients(order: float) -> tuple[float, ...]:
    """1 / (m! (order + 1)_m) for m = 0 .. `SERIES_TERMS`, the power series of I_order in (kappa / 2)^2."""
    coefficients = [1.0]
    for m in range(1, SERIES_TERMS + 1):
        coefficients.append(coefficients[-1] / (m * (order + m)))
    return tuple(coefficients)


def _polynomial(coefficients: tuple[float, ...], t: Tensor) -> Tensor:
    """sum_i coefficients[i] t^i by Horner's rule."""
    value = torch.full_like(t, coefficients[-1])
    for coefficient in reversed(coefficients[:-1]):
        value = value * t + coefficient
    return value


def _power_series(order: float, kappa: Tensor) -> tuple[Tensor, Tensor]:
    """(the reduced log I_order(kappa), log(I_{order+1} / I_order)) by the power series, for kappa <= 2."""
    half = 0.5 * kappa.clamp_max(SERIES_MAX_KAPPA)  # the other branch's kappas, kept finite
    quarter_square = half.square()
    # log(sum_m q^m / (m! (order + 1)_m)): the series without its first factor (kappa/2)^order / Gamma
    series = torch.log1p(quarter_square * _polynomial(_series_coefficients(order)[1:], quarter_square))
    next_series = torch.log1p(
        quarter_square * _polynomial(_series_coefficients(order + 1)[1:], quarter_square)
    )
    return series - kappa, torch.log(half / (order + 1)) + next_series - series


def _debye_recurrence(order: float, kappa: Tensor) -> tuple[Tensor, Tensor]:
    """(the reduced log I_order(kappa), log(I_{order+1} / I_order)) by the expansion at the order
    top >= `DEBYE_MIN_ORDER` and the backward recurrence from there down to `order`."""
    steps = max(0, math.ceil(DEBYE_MIN_ORDER - order))
    top = order + steps
    # s = sqrt(order^2 + kappa^2) at the orders top and top + 1, and the series at t = order / s
    root, next_root = torch.sqrt(top**2 + kappa.square()), torch.sqrt((top + 1) ** 2 + kappa.square())
    series = torch.log1p(_polynomial(_debye_coefficients(top), top / root))
    next_series = torch.log1p(_polynomial(_debye_coefficients(top + 1), (top + 1) / next_root))
    # log I = s - top asinh(top / kappa) - log(2 pi s) / 2 + series, so the reduced log I is
    # (s - kappa - top) - top log((top + s) / (2 top)) - log(s / top) / 2 + series + stirling, with
    # stirling = log Gamma(top + 1) - top log(top) + top - log(2 pi top) / 2 (~ 1 / (12 top)), and each part
    # written with s - top = kappa^2 / (s + top), so that it keeps its digits at small kappa as at large:
    # s - kappa - top = top^2 / (s + kappa) - top = -top (kappa + s - top) / (s + kappa)
    stirling = math.lgamma(top + 1) - top * math.log(top) + top - 0.5 * math.log(2 * math.pi * top)
    excess = kappa.square() / (root + top)  # s - top
    reduced = (
        -top * (kappa + excess) / (root + kappa)
        - top * torch.log1p(excess / (2 * top))
        - 0.5 * torch.log1p(excess / top)
        + series
        + stirling
    )
    # the difference of the expansions at top + 1 and top, each part rewritten so that nothing of size
    # log(kappa) cancels (for large kappa the log ratio is ~ -1 / (2 kappa)):
    # s1 - s0 = (2 top + 1) / (s1 + s0) and asinh(a) - asinh(b) = asinh(a sqrt(1 + b^2) - b sqrt(1 + a^2))
    width, both = 2 * top + 1, next_root + root
    log_ratio = (
        width / both
        - torch.asinh((top + 1) / kappa)
        - top * torch.asinh(width / ((top + 1) * root + top * next_root))
        - 0.5 * torch.log1p(width / (both * root))
        + next_series
        - series
    )
    for step in reversed(range(steps)):
        # at w = order + step: I_{w+1} / I_w = 1 / (2 (w + 1) / kappa + I_{w+2} / I_{w+1}), in log(ratio)
        # with expm1 / log1p so that a ratio near 1 (large kappa) keeps its distance from 1, and the reduced
        # log I_w = that of w + 1 + log(1 + kappa I_{w+2} / (2 (w + 1) I_{w+1})), a sum of positive terms
        reduced = reduced + torch.log1p(kappa * log_ratio.exp() / (2 * (order + step + 1)))
        log_ratio = -torch.log1p(torch.expm1(log_ratio) + 2 * (order + step + 1) / kappa)
    return reduced, log_ratio


def _log_bessel_reduced(order: float, kappa: Tensor) -> tuple[Tensor, Tensor]:
    """(the reduced log I_order(kappa), log(I_{order+1}(kappa) / I_order(kappa))), without gradients."""
    if order >= DEBYE_MIN_ORDER:  # no recurrence: nothing is lost at small kappa
        return _debye_recurrence(order, kappa)
    small = kappa < SERIES_MAX_KAPPA
    series_reduced, series_log_ratio = _power_series(order, kappa)
    reduced, log_ratio = _debye_recurrence(order, kappa.clamp_min(SERIES_MAX_KAPPA))
    return torch.where(small, series_reduced, reduced), torch.where(small, series_log_ratio, log_ratio)


class _LogBesselReduced(torch.autograd.Function):
    """(the reduced log I_v(kappa), log R) with R = I_{v+1} / I_v, and their derivatives in kappa written
    out: R - 1 (from d log I_v / dk = R + v / k) and R' / R with R' = 1 - R^2 - (2v + 1) R / k."""

    @staticmethod
    def forward(kappa: Tensor, order: float) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        return _log_bessel_reduced(order, kappa)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, float], output: tuple[Tensor, Tensor]) -> None:
        kappa, order = inputs
        ctx.save_for_backward(kappa, output[1])
        ctx.order = order

    @staticmethod
    def backward(ctx: Any, grad_reduced: Tensor, grad_log_ratio: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        kappa, log_ratio = ctx.saved_tensors
        ratio, ratio_minus_one = log_ratio.exp(), torch.expm1(log_ratio)
        d_log_ratio = -ratio_minus_one * (1 + ratio) / ratio - (2 * ctx.order + 1) / kappa  # R' / R
        return grad_reduced * ratio_minus_one + grad_log_ratio * d_log_ratio, None


class _LogBesselIv(torch.autograd.Function):
    """log I_v(kappa), with its derivative R + v / k taken from R itself (through the reduced log I_v it would
    be (R - 1) + 1, which loses the digits of a small R)."""

    @staticmethod
    def forward(kappa: Tensor, order: float) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        reduced, log_ratio = _log_bessel_reduced(order, kappa)
        return _unreduce(order, kappa, reduced), log_ratio

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, float], output: tuple[Tensor, Tensor]) -> None:
        kappa, order = inputs
        ctx.save_for_backward(kappa, output[1])
        ctx.order = order
        ctx.mark_non_differentiable(output[1])

    @staticmethod
    def backward(ctx: Any, grad: Tensor, _: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        kappa, log_ratio = ctx.saved_tensors
        return grad * (log_ratio.exp() + ctx.order / kappa), None


def _checked(order: float, kappa: Tensor) -> Tensor:
    """`kappa` in float32 at least, kept where the functions are finite; refuses a negative order."""
    if order < 0:
        raise ValueError(f"the order of the Bessel function must be >= 0, got {order}")
    kappa = kappa.to(torch.promote_types(kappa.dtype, torch.float32))
    # kappa = 0 would give 0 * inf, and kappa^2 must stay a float32 (beyond 1e15 nothing is meaningful)
    return kappa.clamp(1e-30, 1e15)


def _unreduce(order: float, kappa: Tensor, reduced: Tensor) -> Tensor:
    """log I_order(kappa) from the reduced log I_order(kappa)."""
    return reduced + kappa + order * torch.log(0.5 * kappa) - math.lgamma(order + 1)


def log_bessel_reduced(order: float, kappa: Tensor) -> tuple[Tensor, Tensor]:
    """(log(Gamma(v + 1) (2 / kappa)^v e^(-kappa) I_v(kappa)), log(I_{v+1}(kappa) / I_v(kappa))) for the order
    v = `order`, each shaped as `kappa` (> 0), differentiable in kappa; in float32 at least (float64 stays).

    The first, the reduced log I_v, is log I_v without its leading factors at small kappa ((kappa / 2)^v /
    Gamma(v + 1)) and at large (e^kappa): the vMF log normaliser and KL are simple sums of the two outputs.
    """
    kappa = _checked(order, kappa)
    if torch.is_grad_enabled() and kappa.requires_grad:
        return _LogBesselReduced.apply(kappa, float(order))
    # the plain ops, which torch.jit.trace and torch.export read (neither takes an autograd.Function)
    return _log_bessel_reduced(float(order), kappa)


def log_bessel_iv(order: float, kappa: Tensor) -> Tensor:
    """log I_order(kappa), shaped as `kappa` (> 0), in float32 at least; its gradient is
    I_{order+1} / I_order + order / kappa."""
    kappa = _checked(order, kappa)
    if torch.is_grad_enabled() and kappa.requires_grad:
        return _LogBesselIv.apply(kappa, float(order))[0]
    return _unreduce(order, kappa, _log_bessel_reduced(float(order), kappa)[0])


def bessel_ratio(order: float, kappa: Tensor) -> Tensor:
    """I_{order+1}(kappa) / I_order(kappa) in [0, 1), shaped as `kappa`."""
    return log_bessel_reduced(order, kappa)[1].exp()
