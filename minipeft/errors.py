"""The errors more than one part of minipeft raises; they sit below everything, so any module may raise them.

Each is a ValueError: a bad value from the caller or a file, whose message names the thing, the value and the fix.
"""


class ConfigError(ValueError):
    """A config (an adapter's, a quantization's) asks for something minipeft does not implement, or holds a bad
    value."""


class AdapterError(ValueError):
    """An adapter file is missing, corrupted, or does not fit the base model."""


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, or that does not fit the model."""
