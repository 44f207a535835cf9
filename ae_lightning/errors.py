"""Errors for input a user can fix: the CLI prints their message alone, without a traceback."""


class AELightningError(Exception):
    """Base of every error that says what is wrong with the user's input and what to do about it."""


class ConfigError(AELightningError, ValueError):
    """An argument or combination of arguments that cannot work (for example a negative `noise_std`)."""


class DataError(AELightningError, RuntimeError):
    """Dataset files that are missing, truncated or corrupt."""


class CheckpointError(AELightningError, RuntimeError):
    """A `--ckpt_path` that does not exist or is not a readable Lightning checkpoint."""
