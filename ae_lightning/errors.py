"""Errors for input a user can fix: the CLI prints their message alone, without a traceback."""


class AELightningError(Exception):
    """Base of every error that says what is wrong with the user's input and what to do about it."""


class ConfigError(AELightningError, ValueError):
    """An argument or combination of arguments that cannot work (for example a negative `noise_std`)."""


class DataError(AELightningError, RuntimeError):
    """Dataset files that are missing, truncated or corrupt."""


class CheckpointError(AELightningError, RuntimeError):
    """A checkpoint that does not exist, is damaged, is not a Lightning checkpoint or holds more than data."""


class WriteError(AELightningError, OSError):
    """A file of the run that could not be written: the disk is full, the folder read-only, ..."""


class TrainingError(AELightningError, RuntimeError):
    """Training that cannot go on usefully, such as a loss that became NaN or infinite."""


class DeviceMemoryError(TrainingError):
    """The device (a GPU, or the CPU's memory) ran out of memory for the batch, the model or the data."""
