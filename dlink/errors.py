"""Exception types the API raises; the CLI turns each into one line on stderr and exit 1."""


class DLinkError(Exception):
    """Base class: a problem the user can fix; the message says what and how."""


class DataNotFoundError(DLinkError):
    """The data root or a file in it is missing."""


class DataFormatError(DLinkError):
    """A recording or data file is malformed (channels, rate, shapes, NaN/Inf, truncation)."""


class ChecksumError(DLinkError):
    """A file's sha256 does not match the one on record."""


class CheckpointError(DLinkError):
    """A model checkpoint is missing, corrupted, unsafe, or does not match the model."""


class ConfigError(DLinkError):
    """An option or preset is unknown or inconsistent."""
