"""DLink on-board runtime: verify an exported model folder, stream EEG through it.

Reads only what ``dlink-export`` writes (``manifest.json`` and the files it lists) and
imports only the standard library, numpy, scipy.signal, edfio and one inference backend
(ONNX Runtime, or LiteRT / tflite_runtime), the latter lazily. Never torch or MNE.

    from edge_runtime import open_model, StreamingClassifier
    model = open_model("export/mic-s", backend="onnx", precision="int8")
    clf = StreamingClassifier(model)
    for result in clf.push(samples_uV):  # (n_chans, n) at the manifest's sfreq
        print(result.t_end, result.label, result.probabilities)
"""

from edge_runtime.errors import (
    ArtifactError,
    ArtifactMissingError,
    BackendError,
    BackendUnavailableError,
    BudgetError,
    ChannelMismatchError,
    ChecksumError,
    EdgeError,
    GateError,
    ManifestError,
    NonFiniteError,
    SourceError,
)
from edge_runtime.manifest import Artifact, InputSpec, Manifest, OutputSpec, load_manifest
from edge_runtime.model import EdgeModel, open_model
from edge_runtime.stream import (
    NONFINITE_POLICIES,
    StreamingClassifier,
    StreamStats,
    WindowResult,
    classify_offline,
)

__version__ = "0.1.0"

__all__ = [
    "NONFINITE_POLICIES",
    "Artifact",
    "ArtifactError",
    "ArtifactMissingError",
    "BackendError",
    "BackendUnavailableError",
    "BudgetError",
    "ChannelMismatchError",
    "ChecksumError",
    "EdgeError",
    "EdgeModel",
    "GateError",
    "InputSpec",
    "Manifest",
    "ManifestError",
    "NonFiniteError",
    "OutputSpec",
    "SourceError",
    "StreamStats",
    "StreamingClassifier",
    "WindowResult",
    "classify_offline",
    "load_manifest",
    "open_model",
]
