"""Spectral fidelity of an int8 model: how much quantisation noise lands in each EEG band.

Agreement and logit SQNR say whether the int8 file decides like fp32; they do not say
whether it still *sees* the EEG like fp32. This measures the model's first internal
representation -- the output of its first convolution and activation, for EEG-MiC the
rectified outputs of the learned filter bank, (B, F, C, T') -- in the fp32 ONNX file and,
as its int8 value (the tensor after its QuantizeLinear/DequantizeLinear pair), in the int8
QDQ file, on held-out windows. For each EEG band it reports

    noise-to-signal ratio (dB) = 10 log10( PSD(int8 - fp32) / PSD(fp32) ), summed over the band,

with Welch PSDs along the representation's time axis (its sampling rate is the model's
rate divided by the conv stride). -30 dB means the int8 copy's error carries a thousandth
of that band's power. Bands above the representation's Nyquist frequency are left out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

BANDS_HZ = {"delta": (1, 4), "theta": (4, 8), "alpha": (8, 13), "beta": (13, 30), "gamma": (30, 45)}


def _first_activation(graph) -> tuple[str, int]:
    """(tensor name, time stride) of the first Conv's output, after its Relu/Clip if any."""
    conv = next(n for n in graph.node if n.op_type == "Conv")
    stride = next((list(a.ints)[-1] for a in conv.attribute if a.name == "strides"), 1)
    name = conv.output[0]
    for node in graph.node:
        if node.op_type in ("Relu", "Clip") and node.input and node.input[0] == name:
            return node.output[0], int(stride)
    return name, int(stride)


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> bytes:
    existing = {o.name for o in model.graph.output}
    for name in names:
        if name not in existing:
            model.graph.output.append(onnx.helper.make_value_info(name, onnx.TypeProto()))
    return model.SerializeToString()


def _run(model_bytes: bytes, X: np.ndarray, input_name: str, wanted: str) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # unfused: the QDQ pairs compute exactly the int8 values, and inner tensors stay visible
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    outs = [sess.run([wanted], {input_name: X[i:i + 32]})[0] for i in range(0, len(X), 32)]
    assert wanted in names, f"{wanted} is not an output"
    return np.concatenate(outs)


def band_errors(fp32_path: Path, int8_path: Path, X: np.ndarray, sfreq: float,
                input_name: str = "eeg") -> dict:
    """Per-band noise-to-signal ratio (dB) of the int8 file's first representation.

    Parameters
    ----------
    fp32_path, int8_path : the fp32 ONNX file and its int8 QDQ twin.
    X : (n, C, T) held-out windows in model units.
    sfreq : the model's sampling rate in Hz.

    Returns
    -------
    dict: ``tensor`` (its name in the files), ``fs_hz`` (its sampling rate),
    ``band_nsr_db`` {band: dB}, ``n_windows``.
    """
    from scipy.signal import welch

    fp32 = onnx.load(str(fp32_path))
    name, stride = _first_activation(fp32.graph)
    int8 = onnx.load(str(int8_path))
    dq = {n.input[0]: n for n in int8.graph.node if n.op_type == "DequantizeLinear"}
    q = next((n for n in int8.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == name), None)
    if q is None or q.output[0] not in dq:
        raise ValueError(f"the int8 file has no QuantizeLinear/DequantizeLinear pair on {name!r}")
    int8_name = dq[q.output[0]].output[0]
    ref = _run(_with_outputs(fp32, [name]), X, input_name, name)  # (n, F, C, T')
    got = _run(_with_outputs(int8, [int8_name]), X, input_name, int8_name)
    fs = sfreq / stride
    nper = min(ref.shape[-1], int(fs))
    f, p_ref = welch(ref, fs=fs, nperseg=nper, axis=-1)
    _, p_err = welch(got - ref, fs=fs, nperseg=nper, axis=-1)
    p_ref, p_err = p_ref.reshape(-1, len(f)).mean(0), p_err.reshape(-1, len(f)).mean(0)
    bands = {}
    for band, (lo, hi) in BANDS_HZ.items():
        sel = (f >= lo) & (f < hi)
        if lo < fs / 2 and sel.any():
            bands[band] = round(float(10 * np.log10(p_err[sel].sum() / max(p_ref[sel].sum(), 1e-30))), 2)
    return {"tensor": name, "fs_hz": fs, "band_nsr_db": bands, "n_windows": int(len(X))}


def band_errors_safe(fp32_path: Path, int8_path: Path, X: np.ndarray, sfreq: float) -> dict:
    """`band_errors`, or ``{"unavailable": reason}`` for a graph it cannot read (no Conv)."""
    try:
        return band_errors(fp32_path, int8_path, X, sfreq)
    except (StopIteration, ValueError, KeyError) as exc:
        return {"unavailable": f"{type(exc).__name__}: {exc}"}
