"""Rejection sampling without a loop on the host: a fixed number of proposals, drawn and tested at once."""

import torch
from torch import Tensor


def first_accepted(proposals: Tensor, accepted: Tensor) -> tuple[Tensor, Tensor]:
    """The first accepted of S proposals for each of B samples, and where none was accepted.

    proposals: (S, B, ...) candidates; accepted: (S, B) bool, each candidate's acceptance test. A loop that
    draws until every sample is accepted would read the acceptances on the host at every round (a wait for
    the GPU each time). Here the S rounds are drawn at once and the first accepted candidate is picked on the
    device; where all S were rejected the last one is taken, which biases that sample towards the proposal
    distribution. With acceptance probability p that happens with probability (1 - p)^S: a model picks S so
    that this is negligible, says S and the rate in its documentation, and can report the rate from the
    returned mask.

    Returns:
        samples (B, ...), and fell_back (B,) bool: no proposal was accepted.
    """
    count = accepted.shape[0]
    fell_back = ~accepted.any(0)
    first = accepted.to(torch.uint8).argmax(0)  # the first maximum: the first accepted (0 where none)
    index = torch.where(fell_back, count - 1, first)
    index = index.view(1, -1, *[1] * (proposals.ndim - 2)).expand(1, *proposals.shape[1:])
    return proposals.gather(0, index)[0], fell_back


def standard_normal(
    shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """N(0, 1) draws of `shape` on `device`: drawn there (no copy from the host, which would wait for a GPU)
    unless a CPU `generator` is given to make them repeatable (pictures), then drawn on the CPU and moved."""
    if generator is None:
        return torch.randn(shape, device=device, dtype=dtype)
    return torch.randn(shape, generator=generator).to(device, dtype)
