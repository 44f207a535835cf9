"""Normalising flows for a VAE posterior, in plain PyTorch: planar and radial flows (Rezende & Mohamed, 2015)
and inverse autoregressive flow steps (Kingma et al., 2016) on a MADE (Germain et al., 2015).

Every layer maps z (B, D) -> (z' (B, D), log|det dz'/dz| (B,)); the posterior after K layers has the density
log q_K(z_K) = log q_0(z_0) - sum_k log|det_k|.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: smallest |det| a log is taken of: the reparametrisations keep det > 0, but float rounding may reach 0
TINY = 1e-30


class PlanarFlow(nn.Module):
    """f(z) = z + u_hat tanh(w.z + b): (B, D) -> (f(z) (B, D), log|det| (B,)).

    u_hat is u moved along w until w.u_hat = -1 + softplus(w.u) > -1, which makes f invertible (appendix A
    of the paper); log|det| = log|1 + (1 - tanh^2(w.z + b)) w.u_hat|.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        # small w and u with b = 0: the flow starts close to a linear map of the code
        self.u = nn.Parameter(0.1 * torch.randn(dim))
        self.w = nn.Parameter(0.1 * torch.randn(dim))
        self.b = nn.Parameter(torch.zeros(()))

    def u_hat(self) -> Tensor:
        """The invertible reparametrisation of u, (D,): w.u_hat = -1 + softplus(w.u)."""
        wu = (self.w * self.u).sum()
        # the clamp only matters for w = 0, where the correction along w is zero anyway
        along_w = self.w / self.w.square().sum().clamp_min(TINY)
        return self.u + (F.softplus(wu) - 1 - wu) * along_w

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        u_hat = self.u_hat()
        # elementwise products, not a matmul: autocast would run a matmul in bfloat16
        activation = torch.tanh((z * self.w).sum(-1) + self.b)  # (B,)
        out = z + u_hat * activation[:, None]
        slope = 1 + (1 - activation.square()) * (self.w * u_hat).sum()
        return out, slope.abs().clamp_min(TINY).log()


class RadialFlow(nn.Module):
    """f(z) = z + beta h (z - z0), h = 1 / (alpha + r), r = |z - z0|: (B, D) -> (f(z), log|det| (B,)).

    alpha = softplus(.) > 0 and beta = -alpha + softplus(.) > -alpha keep f invertible (appendix A);
    log|det| = (D - 1) log(1 + beta h) + log(1 + beta h + beta h'(r) r) = (D - 1) log(1 + beta h)
    + log(1 + beta alpha h^2).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.center = nn.Parameter(torch.randn(dim))  # z0, drawn like the prior
        # beta starts near 0: the flow starts near the identity
        self.alpha_raw = nn.Parameter(0.1 * torch.randn(()))
        self.beta_raw = nn.Parameter(0.1 * torch.randn(()))

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        alpha = F.softplus(self.alpha_raw)
        beta = F.softplus(self.beta_raw) - alpha
        offset = z - self.center
        # vector_norm's gradient is 0, not NaN, at r = 0
        radius = torch.linalg.vector_norm(offset, dim=-1)  # (B,)
        h = 1 / (alpha + radius)
        out = z + (beta * h)[:, None] * offset
        log_det = (z.shape[-1] - 1) * torch.log1p(beta * h) + torch.log1p(beta * alpha * h.square())
        return out, log_det


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask (out_features, in_features)."""

    def __init__(self, mask: Tensor) -> None:
        super().__init__(mask.shape[1], mask.shape[0])
        # a function of the layer sizes and the order: rebuilt, not saved
        self.register_buffer("mask", mask.to(self.weight.dtype), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """Masked autoencoder (Germain et al., 2015): z (B, D) -> (m, s), each (B, D), where output i depends only
    on the inputs that come before i in the autoregressive order (1..D, or D..1 when `reverse`).

    Hidden units get degrees 1..D-1 in turn; a unit sees the inputs of degree at most its own, and an output
    of degree d sees the last hidden units of degree below d. A hidden layer narrower than D - 1 is allowed
    (still autoregressive, but the later outputs see fewer of the earlier inputs).
    """

    def __init__(self, dim: int, hidden_dims: Sequence[int], reverse: bool = False) -> None:
        super().__init__()
        degrees = torch.arange(1, dim + 1)
        self.register_buffer("order", degrees.flip(0) if reverse else degrees, persistent=False)
        layers: list[nn.Module] = []
        previous = self.order
        for width in hidden_dims:
            # with D = 1 every hidden unit has degree 0: it sees no input, as the single output must not
            hidden = torch.arange(width) % max(dim - 1, 1) + min(dim - 1, 1)
            layers += [MaskedLinear(hidden[:, None] >= previous[None, :]), nn.ELU()]
            previous = hidden
        outputs = torch.cat([self.order, self.order])  # the degrees of m, then of s
        layers.append(MaskedLinear(outputs[:, None] > previous[None, :]))
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        m, s = self.net(z).chunk(2, dim=-1)
        return m, s


class IAFStep(nn.Module):
    """One inverse autoregressive flow step with the LSTM-type update: (m, s) = MADE(z), sigma = sigmoid(s +
    forget_bias), z' = sigma z + (1 - sigma) m; log|det| = sum log sigma (the Jacobian is triangular in the
    order of the MADE). (B, D) -> (z' (B, D), log|det| (B,)).

    `reverse` runs the autoregressive order D..1: alternating it between steps is the paper's reversal of the
    variables between steps, done by the masks instead of by moving the variables (the same maps).
    `forget_bias` (the paper suggests +1 or +2) starts sigma near 1, each step near the identity.
    """

    def __init__(
        self, dim: int, hidden_dims: Sequence[int], reverse: bool = False, forget_bias: float = 2.0
    ) -> None:
        super().__init__()
        self.made = MADE(dim, hidden_dims, reverse)
        self.forget_bias = forget_bias

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        m, s = self.made(z)
        # float32 (at least) when autocast ran the MADE in bfloat16: the log-determinant sums over units
        dtype = torch.promote_types(z.dtype, torch.float32)
        s = s.to(dtype) + self.forget_bias
        sigma = torch.sigmoid(s)
        out = sigma * z + (1 - sigma) * m.to(dtype)
        # log sigmoid(s) as -softplus(-s): the ONNX exporter writes logsigmoid as log(sigmoid), -inf below -88
        return out, -F.softplus(-s).sum(-1)
