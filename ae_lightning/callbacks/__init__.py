"""Lightning callbacks."""

from ae_lightning.callbacks.sample_grid import SampleGridCheckpoint

__all__ = ["SampleGridCheckpoint"]
