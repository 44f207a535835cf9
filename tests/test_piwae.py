"""PIWAE: the encoder's MIWAE bound and the decoder's IWAE bound on the same draws, each part's gradient."""

import math

import pytest
import torch

from ae_lightning.autoencoders import IWAE, MIWAE
from ae_lightning.autoencoders.interface import take_part_gradients
from ae_lightning.autoencoders.piwae import PIWAE, miwae_bound
from ae_lightning.batch import Batch
from ae_lightning.errors import ConfigError
from tests.split_models import train_in_parts
from tests.test_autoencoders import fixed_batch


def small(cls: type[MIWAE] | type[IWAE], **kwargs) -> MIWAE | IWAE:
    torch.manual_seed(0)
    return cls(latent_dim=3, hidden_dims=[16], **kwargs)


#: importance weights of M K = 4 draws (rows, groups of K = 2 consecutive rows) of two images (columns)
HAND_WEIGHTS = torch.tensor([[1.0, 4.0], [3.0, 4.0], [2.0, 1.0], [6.0, 1.0]])
#: the mean of the two groups' log mean weight: image 0 (log 2 + log 4) / 2, image 1 (log 4 + log 1) / 2
HAND_MIWAE = torch.tensor([1.5 * math.log(2), math.log(2)])
#: the log mean of all four weights: log 12 / 4, log 10 / 4
HAND_IWAE = torch.tensor([math.log(3), math.log(2.5)])


def test_miwae_bound_on_hand_weights() -> None:
    torch.testing.assert_close(miwae_bound(HAND_WEIGHTS.log(), 2), HAND_MIWAE)
    torch.testing.assert_close(miwae_bound(HAND_WEIGHTS.log(), 1), HAND_IWAE)  # M = 1: the IWAE bound


@pytest.mark.parametrize("cls", [PIWAE, MIWAE, IWAE])
def test_encoder_loss_is_the_miwae_bound_and_loss_the_iwae_bound_of_hand_log_weights(
    cls, monkeypatch
) -> None:
    """PIWAE, MIWAE (M = 2, K = 2) and IWAE (K = 4) all given the same log weights by hand."""
    model = small(cls, num_samples=4) if cls is IWAE else small(cls, num_samples=2, num_estimates=2)
    batch = fixed_batch(count=2)
    mu, logvar = torch.zeros(2, 3), torch.zeros(2, 3)
    recon = torch.arange(8.0).view(4, 2)

    def hand_log_weights(batch: Batch, num_samples: int, chunk_size: int | None = None):
        assert num_samples == chunk_size == 4  # all M K draws, in one chunk
        return HAND_WEIGHTS.log(), recon, mu, logvar

    monkeypatch.setattr(model, "log_weights", hand_log_weights)
    terms = model.loss_terms(batch)
    torch.testing.assert_close(terms["recon"], torch.tensor([3.0, 4.0]))
    if cls is PIWAE:
        torch.testing.assert_close(terms["encoder_loss"], -HAND_MIWAE)
        torch.testing.assert_close(terms["miwae_bound"], HAND_MIWAE)
        torch.testing.assert_close(terms["loss"], -HAND_IWAE)
        torch.testing.assert_close(terms["bound"], HAND_IWAE)
    else:  # the models whose bounds PIWAE's parts take, on the same log weights
        torch.testing.assert_close(terms["loss"], -(HAND_MIWAE if cls is MIWAE else HAND_IWAE))


def test_parts_take_the_gradients_of_miwae_and_iwae_on_the_same_draws() -> None:
    """With the same weights and noise, the encoder's gradient is MIWAE(M = 2, K = 3)'s and the decoder's
    IWAE(K = 6)'s."""
    batch = fixed_batch(count=4)
    piwae = small(PIWAE, num_samples=3, num_estimates=2)
    parts = piwae.checked_parts()
    assert [(part.name, part.loss) for part in parts] == [("encoder", "encoder_loss"), ("decoder", "loss")]
    torch.manual_seed(7)
    terms = piwae.loss_terms(batch)
    take_part_gradients(terms, parts, 0)
    for cls, kwargs, part, key in [
        (MIWAE, {"num_samples": 3, "num_estimates": 2}, parts[0], "encoder_loss"),
        (IWAE, {"num_samples": 6}, parts[1], "loss"),
    ]:
        other = small(cls, **kwargs)
        other.load_state_dict(piwae.state_dict())
        torch.manual_seed(7)
        loss = other.loss_terms(batch)["loss"]
        torch.testing.assert_close(loss, terms[key])
        network = other.encoder if part.name == "encoder" else other.decoder
        expected = torch.autograd.grad(loss.mean(), tuple(network.parameters()))
        for parameter, gradient in zip(part.parameters, expected, strict=True):
            torch.testing.assert_close(parameter.grad, gradient)
    # the encoder's loss is a looser bound than the decoder's: the mean of M bounds of K <= one of M K
    assert (terms["encoder_loss"] >= terms["loss"] - 1e-4).all()


@pytest.mark.parametrize("stepping", ["encoder", "decoder"])
def test_a_part_gradient_reaches_only_its_own_parameters(stepping) -> None:
    model = small(PIWAE, num_samples=2, num_estimates=2)
    parts = {part.name: part for part in model.checked_parts()}
    take_part_gradients(model.loss_terms(fixed_batch(count=4)), [parts[stepping]], 0)
    for name, part in parts.items():
        if name == stepping:
            assert all(p.grad is not None for p in part.parameters)
            assert sum(p.grad.abs().sum() for p in part.parameters) > 0
        else:
            assert all(p.grad is None for p in part.parameters)


def test_trains_with_one_optimizer_per_part() -> None:
    """150 steps of one Adam per part on 16 uniform random 1x28x28 images (mlp [64], latent 8, M = K = 2)
    cut the reconstruction term at least 4-fold and minus the bound 3-fold (seen: 68.7 -> 11.2, 67.9 ->
    19.8)."""
    torch.manual_seed(0)
    model = PIWAE(latent_dim=8, hidden_dims=[64], num_samples=2, num_estimates=2).train()
    batch = Batch(torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(5)))

    def measured() -> dict[str, float]:
        torch.manual_seed(1)
        with torch.no_grad():
            return {key: value.mean().item() for key, value in model.loss_terms(batch).items()}

    first = measured()
    train_in_parts(model, batch, same_noise=False)
    last = measured()
    assert last["recon"] < first["recon"] / 4
    assert last["loss"] < first["loss"] / 3


def test_defaults_and_refused_arguments() -> None:
    model = PIWAE(latent_dim=2, hidden_dims=[8])
    assert (model.num_estimates, model.num_samples) == (8, 8)  # the paper's (M, K)
    for kwargs in ({"num_estimates": 0}, {"num_samples": 0}, {"beta": 2.0}):
        with pytest.raises(ConfigError):
            PIWAE(latent_dim=2, hidden_dims=[8], **kwargs)
