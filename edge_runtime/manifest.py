"""Read and check `manifest.json`, the contract between the exporter and the board.

The schema is described in ``docs/manifest.md`` (``dlink-manifest/1``). This module is
the only place that parses it; the rest of the runtime works with the typed objects below.
"""

from __future__ import annotations

import importlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from edge_runtime.errors import (
    ArtifactMissingError,
    ChecksumError,
    ManifestError,
)
from edge_runtime.preprocessing import validate_ops

SCHEMA = "dlink-manifest/1"
MANIFEST_NAME = "manifest.json"
KNOWN_OPS = ("clip", "scale", "demean", "sosfilt")
FORMAT_OF_BACKEND = {"onnx": "onnx", "tflite": "tflite"}


@dataclass(frozen=True)
class InputSpec:
    """One model input window, as the exporter described it.

    Parameters
    ----------
    name : graph input name (ONNX); TFLite models have a single input and ignore it.
    ch_names : channel names in the order the model expects them.
    sfreq : sampling rate in Hz of the samples the preprocessing sees.
    n_times : samples per window.
    hop : default samples between two decisions.
    units : units of the pushed samples; always ``"uV"`` in schema 1.
    preprocessing : ordered ops, plain dicts (``clip``, ``scale``, ``demean``, ``sosfilt``).
    """

    name: str
    ch_names: tuple[str, ...]
    sfreq: float
    n_times: int
    hop: int
    units: str = "uV"
    layout: str = "NCT"
    dtype: str = "float32"
    preprocessing: tuple[dict, ...] = ()

    @property
    def n_chans(self) -> int:
        return len(self.ch_names)

    @property
    def window_s(self) -> float:
        return self.n_times / self.sfreq


@dataclass(frozen=True)
class OutputSpec:
    name: str
    kind: str  # "logits" (softmax gives probabilities) or "probabilities"
    class_names: tuple[str, ...]

    @property
    def n_outputs(self) -> int:
        return len(self.class_names)


@dataclass(frozen=True)
class Artifact:
    path: str  # relative to the model folder
    format: str  # "onnx", "tflite", "c-header", ...
    precision: str  # "fp32", "int8", ...
    sha256: str
    bytes: int | None = None
    io: dict = field(default_factory=dict)
    gate: dict | None = None

    @property
    def label(self) -> str:
        return f"{self.format}/{self.precision} ({self.path})"


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest plus the folder it came from."""

    root: Path
    model: dict
    input: InputSpec
    output: OutputSpec
    artifacts: tuple[Artifact, ...]
    raw: dict

    def path_of(self, artifact: Artifact) -> Path:
        return self.root / artifact.path

    def select(self, fmt: str, precision: str) -> Artifact:
        """The artifact of this format and precision, or a ManifestError listing what exists."""
        for art in self.artifacts:
            if art.format == fmt and art.precision == precision:
                return art
        runnable = [a for a in self.artifacts if a.format in FORMAT_OF_BACKEND.values()]
        have = ", ".join(f"{a.format}/{a.precision}" for a in runnable) or "none"
        raise ManifestError(
            f"{self.root / MANIFEST_NAME} lists no {fmt} artifact with precision "
            f"{precision!r}; runnable artifacts: {have}. Pick one of those with "
            f"--backend/--precision."
        )


def _sha256():
    """A sha256 object from CPython's built-in implementation when there is one: `hashlib`
    maps OpenSSL's libcrypto (about 3.5 MB resident) to hash a few small files."""
    for name in ("_sha2", "_sha256"):  # CPython >= 3.12, 3.11
        try:
            return importlib.import_module(name).sha256()
        except (ImportError, AttributeError):
            continue
    import hashlib

    return hashlib.sha256()


def sha256_file(path: Path, chunk: int = 1 << 16) -> str:
    h = _sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def load_manifest(model_dir: str | Path, *, verify: bool = True) -> Manifest:
    """Parse ``MODEL_DIR/manifest.json`` and, by default, verify every artifact's sha256.

    Raises
    ------
    ManifestError : the folder or manifest is missing or malformed.
    ArtifactMissingError, ChecksumError : see `verify_artifacts`.
    """
    root = Path(model_dir)
    path = root / MANIFEST_NAME
    if not root.is_dir():
        raise ManifestError(f"model folder {root} does not exist (or is not a folder).")
    if not path.is_file():
        raise ManifestError(
            f"{path} is missing; a model folder is what `dlink-export` writes: "
            f"manifest.json plus the model files it lists."
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path} is not readable JSON: {exc}") from exc
    manifest = _parse(root, raw)
    if verify:
        verify_artifacts(manifest)
    return manifest


def verify_artifacts(manifest: Manifest) -> None:
    """Check that every listed file exists and has the recorded sha256 (and size)."""
    for art in manifest.artifacts:
        path = manifest.path_of(art)
        if not path.is_file():
            raise ArtifactMissingError(
                f"{path} is listed in {MANIFEST_NAME} ({art.format}/{art.precision}) but "
                f"missing; copy the whole model folder written by dlink-export."
            )
        digest = sha256_file(path)
        if digest != art.sha256.lower():
            size = path.stat().st_size
            sizes = f"; size {size} bytes, manifest says {art.bytes}" if art.bytes else ""
            raise ChecksumError(
                f"{path} has sha256 {digest[:16]}…, manifest says {art.sha256[:16]}…{sizes}. "
                f"The file was modified or truncated; re-copy the model folder."
            )
        if art.bytes is not None and path.stat().st_size != art.bytes:
            raise ChecksumError(
                f"{path} has {path.stat().st_size} bytes, {MANIFEST_NAME} says {art.bytes} "
                f"(the sha256 matches): the manifest disagrees with its files; re-export."
            )


def _parse(root: Path, raw: object) -> Manifest:
    where = root / MANIFEST_NAME
    if not isinstance(raw, dict):
        raise ManifestError(f"{where} must hold a JSON object, found {type(raw).__name__}.")
    schema = raw.get("schema")
    if schema != SCHEMA:
        raise ManifestError(
            f"{where} has schema {schema!r}; this runtime reads {SCHEMA!r}. "
            f"Re-export the model or update dlink-edge."
        )
    try:
        inp = _parse_input(raw["input"])
        out = _parse_output(raw["output"])
        arts = tuple(_parse_artifact(a) for a in raw["artifacts"])
    except KeyError as exc:
        raise ManifestError(f"{where} lacks the field {exc.args[0]!r}.") from exc
    except (TypeError, ValueError) as exc:
        raise ManifestError(f"{where} is malformed: {exc}") from exc
    return Manifest(root=root, model=dict(raw.get("model", {})), input=inp, output=out,
                    artifacts=arts, raw=raw)


def _parse_input(d: dict) -> InputSpec:
    spec = InputSpec(
        name=str(d["name"]),
        ch_names=tuple(str(c) for c in d["ch_names"]),
        sfreq=float(d["sfreq"]),
        n_times=int(d["n_times"]),
        hop=int(d.get("hop", d["n_times"])),
        units=str(d.get("units", "uV")),
        layout=str(d.get("layout", "NCT")),
        dtype=str(d.get("dtype", "float32")),
        preprocessing=tuple(dict(op) for op in d.get("preprocessing", ())),
    )
    if spec.layout != "NCT":
        raise ValueError(f"input.layout is {spec.layout!r}; only 'NCT' is supported")
    if spec.units not in ("uV", "µV"):
        raise ValueError(f"input.units is {spec.units!r}; schema 1 streams µV ('uV')")
    if spec.dtype != "float32":
        raise ValueError(f"input.dtype is {spec.dtype!r}; the graph input must be float32")
    if not spec.ch_names or spec.n_times < 1 or spec.hop < 1:
        raise ValueError("input needs ch_names, n_times >= 1 and hop >= 1")
    if not (math.isfinite(spec.sfreq) and spec.sfreq > 0):
        raise ValueError(f"input.sfreq must be a positive number, got {spec.sfreq}")
    for op in spec.preprocessing:
        if op.get("op") not in KNOWN_OPS:
            raise ValueError(
                f"preprocessing op {op.get('op')!r} is unknown to this runtime "
                f"(known: {', '.join(KNOWN_OPS)}); update dlink-edge"
            )
    validate_ops(spec.preprocessing, spec.n_chans)
    return spec


def _parse_output(d: dict) -> OutputSpec:
    kind = str(d.get("kind", "logits"))
    if kind not in ("logits", "probabilities"):
        raise ValueError(f"output.kind is {kind!r}; expected 'logits' or 'probabilities'")
    names = tuple(str(c) for c in d["class_names"])
    if len(names) < 2:
        raise ValueError("output.class_names needs at least two classes")
    return OutputSpec(name=str(d.get("name", "logits")), kind=kind, class_names=names)


def _parse_artifact(d: dict) -> Artifact:
    rel = str(d["path"])
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts or "\\" in rel:
        raise ValueError(f"artifact path {rel!r} must be relative and inside the folder")
    sha = str(d["sha256"])
    if len(sha) != 64:
        raise ValueError(f"artifact {rel!r} has no valid sha256 (64 hex digits)")
    size = d.get("bytes")
    return Artifact(path=rel, format=str(d["format"]), precision=str(d.get("precision", "")),
                    sha256=sha, bytes=int(size) if size is not None else None,
                    io=dict(d.get("io") or {}), gate=d.get("gate"))
