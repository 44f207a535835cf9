"""Lightning callbacks."""

from ae_lightning.callbacks.prediction_writer import PredictionWriter
from ae_lightning.callbacks.run_config import SaveRunConfig
from ae_lightning.callbacks.sample_grid import SampleGridCheckpoint

__all__ = ["PredictionWriter", "SampleGridCheckpoint", "SaveRunConfig"]
