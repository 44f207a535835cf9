"""Post-hoc samplers: codes for a trained model's decoder, from its prior or fitted on the training codes
(pythae's samplers), and what `cli.py sample` runs (`ae_lightning.samplers.command`)."""

from ae_lightning.samplers.base import Sampler
from ae_lightning.samplers.flows import IAFSampler, MAFSampler
from ae_lightning.samplers.gmm import GaussianMixtureSampler
from ae_lightning.samplers.pixelcnn import PixelCNNSampler
from ae_lightning.samplers.prior import HypersphereSampler, NormalSampler, PoincareSampler, VampSampler
from ae_lightning.samplers.rhvae import RHVAESampler
from ae_lightning.samplers.two_stage import TwoStageSampler

#: every sampler by the name `--sampler` takes
SAMPLERS: dict[str, type[Sampler]] = {
    cls.name: cls
    for cls in (
        NormalSampler,
        GaussianMixtureSampler,
        TwoStageSampler,
        MAFSampler,
        IAFSampler,
        VampSampler,
        HypersphereSampler,
        PoincareSampler,
        RHVAESampler,
        PixelCNNSampler,
    )
}

__all__ = [
    "SAMPLERS",
    "GaussianMixtureSampler",
    "HypersphereSampler",
    "IAFSampler",
    "MAFSampler",
    "NormalSampler",
    "PixelCNNSampler",
    "PoincareSampler",
    "RHVAESampler",
    "Sampler",
    "TwoStageSampler",
    "VampSampler",
]
