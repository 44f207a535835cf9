"""How well a code recovers the true coordinates of points on a manifold."""

import torch
from torch import Tensor


def ranks(values: Tensor) -> Tensor:
    """The rank of each value (N,) among all, 0 .. N-1, as float64 (ties broken by position)."""
    order = values.argsort()
    ranked = torch.empty_like(order, dtype=torch.float64)
    ranked[order] = torch.arange(len(values), dtype=torch.float64)
    return ranked


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman's rank correlation of two (N,) series: the Pearson correlation of their ranks, in [-1, 1]."""
    ra, rb = ranks(a) - (len(a) - 1) / 2, ranks(b) - (len(b) - 1) / 2
    return (ra @ rb / (ra.norm() * rb.norm()).clamp(min=1e-12)).item()


def linear_fit_r2(codes: Tensor, coordinates: Tensor) -> float:
    """R^2 of the least-squares affine map from codes (N, d) to the true coordinates (N, k), averaged over
    the k coordinates: 1 when the code is an affine function of them, 0 when it predicts no better than
    their mean."""
    codes, coordinates = codes.double(), coordinates.double()
    design = torch.cat([codes, torch.ones(len(codes), 1, dtype=torch.float64)], 1)
    solution = torch.linalg.lstsq(design, coordinates).solution
    residual = (coordinates - design @ solution).square().sum(0)
    total = (coordinates - coordinates.mean(0)).square().sum(0).clamp(min=1e-12)
    return (1 - residual / total).mean().item()


def projection_quality(codes: Tensor, coordinates: Tensor) -> dict[str, float]:
    """`abs_spearman` (a 1-d code against a 1-d coordinate: |Spearman|, the code may run either way) and
    `linear_r2` (any code: R^2 of an affine fit of the coordinates from the code)."""
    quality = {"linear_r2": linear_fit_r2(codes, coordinates)}
    if codes.shape[1] == 1 and coordinates.shape[1] == 1:
        quality["abs_spearman"] = abs(spearman(codes[:, 0], coordinates[:, 0]))
    return quality
