"""What a module keeps in its checkpoints besides the weights, and how it reads them back safely."""

from pathlib import Path
from typing import IO, Any

from lightning.pytorch import LightningModule
from typing_extensions import Self

from ae_lightning.callbacks.gather import gather_shares
from ae_lightning.checkpoints import checkpoint_bytes, read_checkpoint
from ae_lightning.errors import CheckpointError
from ae_lightning.evaluation import Evaluator
from ae_lightning.evaluation.maps import MapCalibration
from ae_lightning.models.rng import RNG_STATES_KEY, rank_states, rng_states, set_rng_states

#: the checkpoint entry holding the anomaly threshold chosen on validation
ANOMALY_THRESHOLD_KEY = "anomaly_threshold"
#: the checkpoint entry holding the anomaly maps' calibration on validation (`evaluation.MapCalibration`)
MAP_CALIBRATION_KEY = "map_calibration"
#: the checkpoint entry saying how the weights are laid out: 2 = the torch model under `model.`; checkpoints
#: without it (written before 2) hold the same tensors without the prefix, and are converted when loaded
FORMAT_KEY = "ae_lightning_format"
FORMAT = 2


class CheckpointState(LightningModule):
    """Saves the random streams and the anomaly threshold with every checkpoint, refuses weights trained for
    other data, converts checkpoints of the earlier layout, and loads files as data only.

    A mixin of `AutoencoderModule`, which holds the torch model as `model` and the threshold as
    `anomaly_threshold`.
    """

    _resumed_rng_states: dict[str, Any] | None = None
    anomaly_threshold: float | None
    evaluator: Evaluator

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # the random streams (noise of the VAE and the denoiser, dynamic binarisation) of every rank continue
        # from here when the run is resumed, as they would had it not stopped. A collective: every rank saves
        # a checkpoint together (Lightning's save_checkpoint is one), at a step's end (PreemptionCheckpoint)
        states = rng_states(self.device)
        try:
            trainer = self.trainer
        except RuntimeError:  # saved by a trainer the module is not attached to: this process's streams
            trainer = None
        checkpoint[RNG_STATES_KEY] = [states] if trainer is None else gather_shares(trainer, states)
        checkpoint[ANOMALY_THRESHOLD_KEY] = self.anomaly_threshold
        calibration = self.evaluator.map_calibration
        checkpoint[MAP_CALIBRATION_KEY] = None if calibration is None else calibration.as_dict()
        checkpoint[FORMAT_KEY] = FORMAT

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuses weights trained for other data: the same layers would load, but the output activation or
        the meaning of the pixels would silently differ. Keeps the saved random streams for resuming."""
        self._resumed_rng_states = checkpoint.get(RNG_STATES_KEY)
        self.anomaly_threshold = checkpoint.get(ANOMALY_THRESHOLD_KEY)
        self.evaluator.map_calibration = MapCalibration.from_dict(checkpoint.get(MAP_CALIBRATION_KEY))
        trained = checkpoint.get("hyper_parameters", {})
        current = self.hparams
        for name, flag in (("value_range", "--data.value_range"), ("image_shape", "the data")):
            if name in trained and list(trained[name]) != list(current[name]):
                raise CheckpointError(
                    f"the checkpoint was trained on data with {name} {list(trained[name])}, but this run's "
                    f"data has {list(current[name])}: set {flag} as in the run that made the checkpoint "
                    "(its config.yaml)"
                )
        if checkpoint.get(FORMAT_KEY, 1) < FORMAT and "state_dict" in checkpoint:
            # format 1: the module was the model, its tensors were `encoder.*`, `decoder.*`, `quantizer.*`
            checkpoint["state_dict"] = {
                f"model.{name}": tensor for name, tensor in checkpoint["state_dict"].items()
            }

    def on_train_start(self) -> None:
        # the streams of a resumed run are restored when training starts, not at loading: between the two,
        # Lightning's sanity-check validation would draw from them what an unbroken run never drew. (Not at
        # the first epoch's start: a run resumed mid-epoch goes on without starting that epoch again.)
        if self._resumed_rng_states is not None:
            trainer = self.trainer
            states = rank_states(self._resumed_rng_states, trainer.global_rank, trainer.world_size)
            set_rng_states(states, self.device)
            self._resumed_rng_states = None

    @classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: str | Path | IO[bytes],
        map_location: Any = None,
        hparams_file: str | Path | None = None,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Self:
        """Lightning's `load_from_checkpoint`, reading the file as `checkpoints.read_checkpoint` does: whole
        (its checksums verified) and as data only; a missing, damaged or foreign file is a CheckpointError."""
        buffer = checkpoint_bytes(checkpoint_path)  # the file is read once
        read_checkpoint(buffer, map_location="cpu", name=f"checkpoint {checkpoint_path}")
        buffer.seek(0)
        return super().load_from_checkpoint(
            buffer, map_location, hparams_file, strict, weights_only=True, **kwargs
        )
