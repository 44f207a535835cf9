"""Lightning callbacks."""

from ae_lightning.callbacks.feature_quality import FeatureQuality
from ae_lightning.callbacks.heat_map_writer import HeatMapWriter
from ae_lightning.callbacks.manifold_report import ManifoldReport
from ae_lightning.callbacks.nonfinite import NonFiniteLossCheck
from ae_lightning.callbacks.prediction_writer import PredictionWriter
from ae_lightning.callbacks.preemption import PreemptionCheckpoint
from ae_lightning.callbacks.progress import ProgressBar
from ae_lightning.callbacks.run_config import SaveRunConfig
from ae_lightning.callbacks.sample_grid import SampleGridCheckpoint
from ae_lightning.callbacks.test_pictures import TestPictures
from ae_lightning.callbacks.watchdog import StepWatchdog

__all__ = [
    "FeatureQuality",
    "HeatMapWriter",
    "ManifoldReport",
    "NonFiniteLossCheck",
    "PredictionWriter",
    "PreemptionCheckpoint",
    "ProgressBar",
    "SampleGridCheckpoint",
    "SaveRunConfig",
    "StepWatchdog",
    "TestPictures",
]
