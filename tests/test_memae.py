"""MemAE: memory addressing, hard shrinkage and entropy against hand computations, the model's paths through
the memory, training, determinism, argument checks and a state_dict round trip."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from ae_lightning.autoencoders.memae import MemAE, MemoryModule, address_entropy, hard_shrink, max_weight
from ae_lightning.batch import Batch
from ae_lightning.errors import ConfigError
from tests.conftest import tiny_digits

E = math.e


def hand_memory(shrink_threshold: float) -> MemoryModule:
    """Three items in 2-D whose cosines with the code (2, 0) are 1, 0 and -1."""
    memory = MemoryModule(3, 2, shrink_threshold)
    with torch.no_grad():
        memory.items.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]]))
    return memory


CODE = torch.tensor([[2.0, 0.0]])


def images(shape: tuple[int, int, int] = (1, 28, 28), count: int = 8) -> torch.Tensor:
    """Tiny digits (a bright square per class over faint noise) in [0, 1], resized to `shape`."""
    digits, _ = tiny_digits(count, seed=3)
    x = digits.float().unsqueeze(1) / 255
    x = F.interpolate(x, size=shape[1:], mode="bilinear") if shape[1:] != (28, 28) else x
    return x.expand(-1, shape[0], -1, -1).contiguous()


def make(backbone: str = "mlp", shape: tuple[int, int, int] = (1, 28, 28), **kwargs) -> MemAE:
    torch.manual_seed(0)
    hidden_dims = [64] if backbone == "mlp" else [8, 16]
    return MemAE(latent_dim=8, backbone=backbone, hidden_dims=hidden_dims, image_shape=shape, **kwargs)


def test_plain_addressing_is_the_softmax_of_cosines() -> None:
    """lambda = 0: w = softmax(1, 0, -1) = (e, 1, 1/e) / (e + 1 + 1/e) = (0.665, 0.245, 0.090) and
    z_hat = w @ M = (w1 - 3 w3, 2 w2)."""
    z_hat, weights = hand_memory(0.0)(CODE)
    expected = torch.tensor([[E, 1.0, 1 / E]]) / (E + 1 + 1 / E)
    assert_close(weights, expected)
    w1, w2, w3 = expected[0].tolist()
    assert_close(z_hat, torch.tensor([[w1 - 3 * w3, 2 * w2]]))


def test_addressing_ignores_the_length_of_codes_and_items() -> None:
    """Cosine similarity (the paper's section 3.3): scaling the code or an item leaves the weights as they
    were."""
    memory = hand_memory(0.0)
    _, weights = memory(CODE)
    _, scaled_code = memory(7.5 * CODE)
    with torch.no_grad():
        memory.items[1] *= 10
    _, scaled_item = memory(CODE)
    assert_close(scaled_code, weights)
    assert_close(scaled_item, weights)


def test_shrinkage_drops_the_weights_under_the_threshold_and_renormalises() -> None:
    """lambda = 0.1 drops w3 = 0.090 and leaves w1 : w2 = e : 1, so w_hat = (e, 1, 0) / (e + 1) = (0.731,
    0.269, 0) and z_hat = 0.731 (1, 0) + 0.269 (0, 2) = (0.731, 0.538)."""
    z_hat, weights = hand_memory(0.1)(CODE)
    assert_close(weights, torch.tensor([[E / (E + 1), 1 / (E + 1), 0.0]]))
    assert weights[0, 2] == 0
    assert_close(z_hat, torch.tensor([[E / (E + 1), 2 / (E + 1)]]))


def test_a_threshold_above_every_weight_but_one_reads_that_item() -> None:
    """lambda = 0.3 is above w2 = 0.245 and w3 but below w1 = 0.665: the read is item 1 itself."""
    z_hat, weights = hand_memory(0.3)(CODE)
    assert torch.equal(weights, torch.tensor([[1.0, 0.0, 0.0]]))
    assert_close(z_hat, torch.tensor([[1.0, 0.0]]))


def test_hard_shrinkage_is_equation_7() -> None:
    """max(w - l, 0) w / (|w - l| + eps): with l = 0.1 and eps = 0.1, w = 0.5 gives 0.5 * 0.4 / 0.5 = 0.4;
    w = l and w < l give 0; with the default eps (1e-12) w = 0.5 stays 0.5."""
    weights = torch.tensor([0.5, 0.1, 0.05])
    assert_close(hard_shrink(weights, 0.1, eps=0.1), torch.tensor([0.4, 0.0, 0.0]))
    assert_close(hard_shrink(weights, 0.1), torch.tensor([0.5, 0.0, 0.0]))


def test_entropy_by_hand_and_safe_at_zero() -> None:
    """(0.5, 0.5, 0) -> log 2 = 0.693; (1, 0, 0) -> 0; (0.25 x 4) -> log 4 = 1.386; (0.7, 0.2, 0.1) ->
    -(0.7 log 0.7 + 0.2 log 0.2 + 0.1 log 0.1) = 0.802. The gradient is finite where a weight is 0."""
    weights = torch.tensor(
        [[0.5, 0.5, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.25] * 4, [0.7, 0.2, 0.1, 0.0]], requires_grad=True
    )
    entropy = address_entropy(weights)
    expected = [
        math.log(2),
        0.0,
        math.log(4),
        -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1)),
    ]
    assert_close(entropy, torch.tensor(expected))
    entropy.sum().backward()
    assert torch.isfinite(weights.grad).all()


def test_loss_terms_are_per_image_and_combine_as_the_paper() -> None:
    """Keys, shapes (B,) and float32; loss = recon + alpha * entropy (section 3.4) with the entropy of the
    weights the encoder's codes read, and recon the summed squared error of the decoded memory read."""
    model = make(entropy_weight=0.5, shrink_threshold=0.005).train()
    x = images(count=5)
    terms = model.loss_terms(Batch(x))
    assert set(terms) == {"loss", "recon", "entropy", "memory_items"}
    assert all(value.shape == (5,) and value.dtype == torch.float32 for value in terms.values())
    z_hat, weights = model.memory(model.encoder(x))
    assert_close(terms["entropy"], address_entropy(weights))
    assert_close(terms["recon"], (model.output_mean(model.decoder(z_hat)) - x).square().flatten(1).sum(1))
    assert_close(terms["loss"], terms["recon"] + 0.5 * terms["entropy"])
    assert_close(terms["memory_items"], (weights > 0).sum(1).float())
    assert (terms["memory_items"] >= 1).all() and (terms["memory_items"] < 100).all()


def test_every_path_goes_through_the_memory() -> None:
    """forward, reconstruct, code, latent and the anomaly score all use z_hat, not the encoder's code."""
    model = make().eval()
    batch = Batch(images(count=4))
    z_hat, _ = model.memory(model.encoder(batch.inputs))
    assert_close(model.code(batch.inputs), z_hat)
    assert_close(model.latent(batch), z_hat)
    assert_close(model(batch.inputs), model.decode(z_hat))
    assert_close(model.reconstruct(batch), model.decode(z_hat))
    bypass = model.reconstruction_loss(model.decoder(model.encoder(batch.inputs)), batch.inputs)
    assert (model.anomaly_score(batch) - bypass).abs().min() > 1e-3


@pytest.mark.parametrize(
    "backbone, shape",
    [("mlp", (1, 28, 28)), ("conv", (1, 28, 28)), ("mlp", (3, 32, 32)), ("conv", (3, 32, 32))],
)
def test_the_loss_falls_in_a_plain_loop(backbone, shape) -> None:
    """30 Adam steps (lr 1e-2) on 8 tiny images cut the loss to under half (seen: 0.24x to 0.32x)."""
    model = make(backbone, shape).train()
    batch = Batch(images(shape))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = model.loss_terms(batch)["loss"].mean().item()
    for _ in range(30):
        loss = model.loss_terms(batch)["loss"].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    terms = model.loss_terms(batch)
    assert terms["loss"].mean().item() < first / 2
    assert (terms["memory_items"] >= 1).all()  # every code still reads the memory


def test_the_reads_tell_images_apart() -> None:
    """The memory does not collapse to one read: after 100 Adam steps the reconstruction error is under a
    third of that of the best single image, the mean of the batch (seen: 6.5 against 36.6)."""
    model = make().train()
    batch = Batch(images())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        loss = model.loss_terms(batch)["loss"].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    x = batch.inputs
    mean_image_error = (x - x.mean(0, keepdim=True)).square().flatten(1).sum(1).mean()
    assert model.eval().anomaly_score(batch).mean() < mean_image_error / 3


@pytest.mark.parametrize("backbone", ["mlp", "conv"])
def test_anomaly_score_is_deterministic_and_the_recon_term(backbone) -> None:
    model = make(backbone).eval()
    batch = Batch(images(count=6))
    first, second = model.anomaly_score(batch), model.anomaly_score(batch)
    assert first.shape == (6,)
    assert torch.equal(first, second)
    assert_close(first, model.loss_terms(batch)["recon"])
    assert_close(model.anomaly_score(Batch(batch.inputs[2:3])), first[2:3])  # alone or in a batch


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"memory_size": 0}, "memory_size must be a positive number of memory items, got 0"),
        ({"shrink_threshold": 1.0}, r"shrink_threshold must be an addressing weight in \[0, 1\)"),
        ({"shrink_threshold": -0.01}, r"shrink_threshold must be an addressing weight in \[0, 1\)"),
        ({"shrink_threshold": 0.1}, r"at least the largest addressing weight a memory of 100 items can give"),
        ({"entropy_weight": -1e-4}, "entropy_weight must be >= 0"),
    ],
)
def test_bad_arguments_are_refused_in_one_line(kwargs, message) -> None:
    with pytest.raises(ConfigError, match=message) as refused:
        MemAE(**kwargs)
    assert "\n" not in str(refused.value)


def test_the_largest_possible_weight() -> None:
    """One item at cosine +1 and the others at -1 give it e^2 / (e^2 + N - 1): 0.0695 for N = 100, 1 for
    N = 1."""
    memory = MemoryModule(100, 2, 0.0)
    with torch.no_grad():
        memory.items.copy_(torch.tensor([[1.0, 0.0]] + [[-1.0, 0.0]] * 99))
    assert_close(memory.address(torch.tensor([[1.0, 0.0]]))[0, 0].item(), max_weight(100))
    assert max_weight(100) == pytest.approx(0.06945, abs=1e-5) and max_weight(1) == 1.0


def test_losses_are_float32_and_weights_sum_to_one_under_bfloat16_autocast() -> None:
    model = make()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = model.loss_terms(Batch(images(count=3)))
        _, weights = model.read(images(count=3))
    assert {term.dtype for term in terms.values()} == {torch.float32}
    assert_close(weights.sum(1), torch.ones(3))


def test_state_dict_round_trip_gives_identical_scores() -> None:
    trained = make("conv")
    optimizer = torch.optim.Adam(trained.parameters(), lr=3e-3)
    batch = Batch(images())
    for _ in range(3):
        loss = trained.loss_terms(batch)["loss"].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.manual_seed(1)
    reloaded = MemAE(latent_dim=8, backbone="conv", hidden_dims=[8, 16])
    assert "memory.items" in trained.state_dict()
    reloaded.load_state_dict(trained.state_dict())
    trained.eval(), reloaded.eval()
    assert torch.equal(reloaded.anomaly_score(batch), trained.anomaly_score(batch))
