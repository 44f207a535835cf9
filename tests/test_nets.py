"""The plain-PyTorch encoders and decoders: shapes for every backbone and image size, no Lightning inside."""

import subprocess
import sys

import pytest
import torch

from ae_lightning.nets import build_decoder, build_encoder
from tests.conftest import linear_shapes


@pytest.mark.parametrize("backbone, hidden_dims", [("mlp", [64, 32]), ("mlp", []), ("conv", [8, 16])])
@pytest.mark.parametrize("image_shape", [(1, 28, 28), (3, 32, 32), (1, 64, 64), (3, 27, 27), (3, 60, 100)])
def test_encoder_and_decoder_shapes(backbone: str, hidden_dims: list[int], image_shape: tuple) -> None:
    encoder = build_encoder(backbone, image_shape, hidden_dims, out_dim=10)
    decoder = build_decoder(backbone, 5, hidden_dims, image_shape)
    x = torch.randn(4, *image_shape)
    assert encoder(x).shape == (4, 10)
    assert decoder(torch.randn(4, 5)).shape == (4, *image_shape)


def test_decoder_mirrors_encoder() -> None:
    encoder = build_encoder("mlp", (1, 28, 28), [400, 100], out_dim=20)
    decoder = build_decoder("mlp", 20, [400, 100], (1, 28, 28))
    assert linear_shapes(encoder) == [(784, 400), (400, 100), (100, 20)]
    assert linear_shapes(decoder) == [(20, 100), (100, 400), (400, 784)]


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [(28, 28), (31, 45), (64, 64), (100, 60), (128, 96), (256, 256)])
def test_conv_backbone_takes_any_size_and_channel_count(channels: int, size: tuple[int, int]) -> None:
    """Heights and widths from 28 to 256, powers of two and others, square or not, gray or RGB: the decoder
    lands exactly on the image's shape and the code has latent_dim numbers."""
    image_shape = (channels, *size)
    encoder = build_encoder("conv", image_shape, [4, 8, 8], out_dim=6)
    decoder = build_decoder("conv", 3, [4, 8, 8], image_shape)
    assert encoder(torch.rand(2, *image_shape)).shape == (2, 6)
    assert decoder(torch.randn(2, 3)).shape == (2, *image_shape)


def test_nets_do_not_import_lightning() -> None:
    code = (
        "import sys, ae_lightning.nets; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_rejection_sampling_with_a_fixed_number_of_proposals(monkeypatch) -> None:
    """Uniform proposals on [0, 1) accepted below 0.5, 6 at a time: an accepted sample is uniform on
    [0, 0.5); a sample with no accepted proposal (probability 0.5^6 = 1/64) falls back to the last one,
    flagged; all of it without a wait for the device."""
    from ae_lightning.nets import first_accepted
    from tests.syncs import count_host_syncs

    generator = torch.Generator().manual_seed(0)
    proposals = torch.rand(6, 200_000, 2, generator=generator)  # two numbers per sample, tested by the first
    with count_host_syncs(monkeypatch) as syncs:
        syncs.active = True
        samples, fell_back = first_accepted(proposals, proposals[..., 0] < 0.5)
    assert syncs.found == []
    assert samples.shape == (200_000, 2)
    assert abs(fell_back.double().mean().item() - 1 / 64) < 0.002
    kept = samples[~fell_back]
    assert (kept[:, 0] < 0.5).all() and abs(kept[:, 0].mean().item() - 0.25) < 0.002
    # the first accepted proposal, whole (both of its numbers); the fallback is the last proposal
    first = (proposals[..., 0] < 0.5).to(torch.uint8).argmax(0)
    torch.testing.assert_close(samples[~fell_back], proposals[first, torch.arange(200_000)][~fell_back])
    torch.testing.assert_close(samples[fell_back], proposals[-1][fell_back])
