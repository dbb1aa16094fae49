"""Exception types of the on-board runtime.

Every error the user can fix is an `EdgeError`; its message says what was expected, what
was found, and what to do. The `dlink-edge` CLI turns each into one line on stderr and a
non-zero exit, never a traceback.
"""

from __future__ import annotations


class EdgeError(Exception):
    """Base class: a problem the user can fix; the message says what and how."""


class ManifestError(EdgeError):
    """`manifest.json` is missing, malformed, of another schema, or asks for something
    this runtime cannot do (unknown preprocessing op, no artifact for backend+precision)."""


class ArtifactError(EdgeError):
    """A model file listed in the manifest cannot be trusted."""


class ArtifactMissingError(ArtifactError):
    """A file listed in the manifest is not in the model folder."""


class ChecksumError(ArtifactError):
    """A file's sha256 differs from the one recorded in the manifest."""


class GateError(ArtifactError):
    """The exporter recorded that this artifact failed its quantisation quality gate."""


class BackendUnavailableError(EdgeError):
    """The inference backend's Python package is not installed (the message names it)."""


class BackendError(EdgeError):
    """The backend could not load or run the model file."""


class ChannelMismatchError(EdgeError, ValueError):
    """Samples pushed with a channel count (or shape) other than the manifest's."""


class NonFiniteError(EdgeError, ValueError):
    """NaN/Inf samples or a declared gap under ``nonfinite='raise'``."""


class SourceError(EdgeError):
    """A recording or sample stream cannot be read as the model's input (channels,
    units, sampling rate, truncated frames)."""


class BudgetError(EdgeError):
    """A board budget is unknown or its file is malformed."""
