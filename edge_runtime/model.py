"""`EdgeModel`: a verified model folder opened with one backend.

Shape legend: B windows, C channels (``n_chans``), T samples per window (``n_times``),
K classes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_runtime.backends import BACKENDS, Backend, LiteRTBackend, OnnxBackend
from edge_runtime.errors import (
    BackendError,
    BackendUnavailableError,
    ChannelMismatchError,
    GateError,
    ManifestError,
)
from edge_runtime.manifest import FORMAT_OF_BACKEND, Artifact, Manifest, load_manifest

PRECISIONS = ("int8", "fp32")


@dataclass
class EdgeModel:
    """One artifact of a model folder, loaded and ready to score windows.

    ``predict`` takes already preprocessed float32 windows; streaming, offline
    classification and preprocessing live in `edge_runtime.stream`.
    """

    manifest: Manifest
    artifact: Artifact
    backend: Backend
    load_s: float  # wall time of sha256 verification + backend initialisation

    @property
    def backend_name(self) -> str:
        return self.backend.name

    @property
    def precision(self) -> str:
        return self.artifact.precision

    @property
    def model_bytes(self) -> int:
        return self.manifest.path_of(self.artifact).stat().st_size

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.manifest.output.class_names

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Scores for preprocessed windows.

        Parameters
        ----------
        x : (B, C, T) float32, already preprocessed (model input units).

        Returns
        -------
        (B, K) float32 raw model output (logits unless ``output.kind`` says otherwise).
        """
        spec = self.manifest.input
        if x.ndim != 3 or x.shape[1:] != (spec.n_chans, spec.n_times):
            raise ChannelMismatchError(
                f"predict expects (B, {spec.n_chans}, {spec.n_times}) windows, got {x.shape}."
            )
        x = np.asarray(x, dtype=np.float32)
        step = self.backend.max_batch
        if 0 < x.shape[0] <= step:  # the streaming case: one call, no concatenation
            y = self.backend.run(x)
        else:
            outs = [self.backend.run(x[i:i + step]) for i in range(0, x.shape[0], step)]
            y = np.concatenate(outs, axis=0) if outs else \
                np.zeros((0, len(self.class_names)), np.float32)
        if y.shape != (x.shape[0], len(self.class_names)):
            raise BackendError(
                f"{self.artifact.path} returned shape {y.shape}; the manifest lists "
                f"{len(self.class_names)} classes for {x.shape[0]} windows."
            )
        return y


def open_model(
    model_dir: str | Path,
    *,
    backend: str = "auto",
    precision: str = "int8",
    threads: int = 1,
    allow_failed_gate: bool = False,
) -> EdgeModel:
    """Verify a model folder and open one of its artifacts.

    Every artifact listed in ``manifest.json`` is checked against its sha256 before
    anything is loaded.

    Parameters
    ----------
    model_dir : folder written by ``dlink-export``.
    backend : ``"onnx"``, ``"tflite"`` or ``"auto"`` (ONNX Runtime if installed and the
        manifest has an ONNX artifact of this precision, else LiteRT).
    precision : ``"int8"`` (default) or ``"fp32"``.
    threads : intra-op threads of the backend.
    allow_failed_gate : load an artifact whose quantisation gate recorded ``passed: false``.

    Raises
    ------
    ManifestError, ArtifactMissingError, ChecksumError, GateError,
    BackendUnavailableError, BackendError.
    """
    t0 = time.perf_counter()
    if backend not in (*BACKENDS, "auto"):
        raise ManifestError(f"backend {backend!r} is unknown; choose onnx, tflite or auto.")
    if threads < 1:
        raise ManifestError(f"threads must be >= 1, got {threads}.")
    manifest = load_manifest(model_dir)
    names = _candidates(manifest, backend, precision)
    for i, name in enumerate(names):
        artifact = manifest.select(FORMAT_OF_BACKEND[name], precision)
        _check_gate(manifest, artifact, allow_failed_gate)
        try:
            impl = _load(manifest, artifact, name, threads)
        except BackendUnavailableError as exc:
            if i + 1 < len(names):  # "auto": try the next installed backend
                continue
            if len(names) > 1:
                raise BackendUnavailableError(
                    "no inference backend is installed: pip install onnxruntime, or "
                    "pip install ai-edge-litert (tflite-runtime on older boards)."
                ) from exc
            raise
        model = EdgeModel(manifest, artifact, impl, load_s=time.perf_counter() - t0)
        _check_shape(model)
        return model
    raise AssertionError("unreachable: _candidates never returns an empty list")


def _candidates(manifest: Manifest, backend: str, precision: str) -> list[str]:
    if backend != "auto":
        return [backend]
    have = [b for b in BACKENDS
            if any(a.format == FORMAT_OF_BACKEND[b] and a.precision == precision
                   for a in manifest.artifacts)]
    return have or ["onnx"]  # "onnx" then fails with the list of runnable artifacts


def _check_gate(manifest: Manifest, artifact: Artifact, allow_failed: bool) -> None:
    gate = artifact.gate
    if isinstance(gate, dict) and gate.get("passed") is False and not allow_failed:
        raise GateError(
            f"{manifest.path_of(artifact)} failed the exporter's quality gate "
            f"(agreement={gate.get('agreement')}, sqnr_db={gate.get('sqnr_db')}); use "
            f"--precision fp32, or --allow-failed-gate to run it anyway."
        )


def _load(manifest: Manifest, artifact: Artifact, name: str, threads: int) -> Backend:
    path = manifest.path_of(artifact)
    if name == "onnx":
        return OnnxBackend(path, manifest.input.name, threads=threads)
    impl = LiteRTBackend(path, threads=threads)
    declared = artifact.io.get("dtype")
    if declared and np.dtype(declared) != impl.input_dtype:
        raise BackendError(
            f"{path} has a {impl.input_dtype} input, the manifest's io.dtype says {declared}."
        )
    return impl


def _check_shape(model: EdgeModel) -> None:
    spec = model.manifest.input
    shape = model.backend.input_shape
    want = (spec.n_chans, spec.n_times)
    got = tuple(shape[1:3]) if len(shape) == 3 else shape
    if len(shape) != 3 or any(isinstance(g, int) and g != w for g, w in zip(got, want)):
        raise ManifestError(
            f"{model.artifact.path} takes input {shape}, the manifest describes windows "
            f"(B, {want[0]}, {want[1]}); the folder mixes files from different exports."
        )
