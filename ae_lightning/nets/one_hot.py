"""One-hot rows made on the device without a wait for it."""

import torch
from torch import Tensor


def one_hot(indices: Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """(N,) integer indices -> (N, num_classes) one-hot rows in `dtype`.

    `torch.nn.functional.one_hot` checks the range of the indices on the host, which makes the host wait
    for a GPU at every call (on a CPU it reads their minimum and maximum). Here an index outside
    [0, num_classes) gives a row of zeros: whoever supplies the indices checks their range once (the
    conditional model's labels before training) or cannot produce one (a codebook's nearest entry).
    """
    classes = torch.arange(num_classes, device=indices.device)
    return (indices.long()[:, None] == classes).to(dtype)
