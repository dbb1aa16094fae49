"""Int8 simulation of the deployed graph, for quantisation-aware distillation ("int8-aware DLink").

`Int8Sim` runs a student's *deployed* graph (`dlink.student.deployed_forward`: BatchNorm
folded, the mimic projection folded, exactly what `dlink-export` ships) with the rounding
the int8 files apply:

- **weights** of every conv and linear layer: symmetric, per output channel, round to
  nearest, ``[-q, q]`` with ``q = 127`` (``63`` with ``reduce_range``, ONNX Runtime's x86
  setting for CPUs without VNNI);
- **activations**: per tensor, asymmetric 8-bit over ``[min, max]`` measured once on
  calibration windows (global min/max, the calibrator both exporters use), at every tensor
  the int8 graph stores: the input, each activation after its fused ReLU6, the residual
  sum (and, once an envelope ceiling is set, the clamped band amplitudes before and after
  the multiply that undoes the ReLU6's gain);
- **logits**: symmetric 16-bit over `LOGITS_HEADROOM` x ``max(|min|, |max|)``, as the
  TFLite file stores them (the headroom keeps new subjects' larger logits in range; the
  ONNX file computes them in float, which this matches to ~80 dB).

Rounding uses the straight-through estimator (``torch.fake_quantize_*``): the forward pass
rounds, the backward pass lets the gradient through inside the range. BatchNorm is folded
at its running statistics, as the export folds it, so during the int8-aware phase the
statistics stay fixed while the affine parameters and the weights train. A simulation of
the *training* graph instead (the (B, C, N, d) mimic tokens, unfolded BatchNorm) rounds at
other places and was measured 4-6 dB more optimistic than the exported files.
"""

from __future__ import annotations

import torch

from dlink.errors import ConfigError

LOGITS_HEADROOM = 4.0  # int16 logits: range = this x the calibration windows' (TFLite export too)


class Int8Sim:
    """Fake-quantised deployed graph of ``student`` (an `EEGMiC`).

    Parameters
    ----------
    student : a model with ``deployed_weights()``, ``deployed_geometry()`` (EEG-MiC).
    reduce_range : 7-bit weights (the ONNX Runtime x86 setting) instead of 8-bit.
    """

    def __init__(self, student, reduce_range: bool = False):
        if not hasattr(student, "deployed_weights"):
            raise ConfigError(f"int8-aware training needs an EEG-MiC student; "
                              f"{type(student).__name__} has no deployed graph to simulate.")
        self.student, self.qmax = student, 63 if reduce_range else 127
        self.ranges: dict[str, list[float]] = {}  # tensor name -> [min, max]
        self.observing = False

    # --- the two quantisers ------------------------------------------------------------
    def _act(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            lo, hi = self.ranges.get(name, [0.0, 0.0])
            self.ranges[name] = [min(lo, float(x.detach().min())), max(hi, float(x.detach().max()))]
            return x
        lo, hi = self.ranges[name]
        if name == "logits":  # int16, symmetric, with the exporter's headroom
            scale = LOGITS_HEADROOM * max(-lo, hi, 1e-8) / 32767.0
            return torch.fake_quantize_per_tensor_affine(x, scale, 0, -32768, 32767)
        scale = max(hi - lo, 1e-8) / 255.0  # the range always holds 0 exactly (lo <= 0 <= hi)
        zero = int(round(-lo / scale)) - 128
        return torch.fake_quantize_per_tensor_affine(x, scale, zero, -128, 127)

    def _weight(self, w: torch.Tensor) -> torch.Tensor:
        amax = w.detach().abs().flatten(1).amax(dim=1).clamp_min(1e-8)  # per output channel
        scale = (amax / self.qmax).float()
        zero = torch.zeros_like(scale, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -self.qmax, self.qmax)

    # --- graphs ------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T) model units -> (B, K) logits of the int8 graph (simulated)."""
        from dlink.student import deployed_forward

        s = self.student
        return deployed_forward(x, s.deployed_weights(), s.deployed_geometry(), q=self._act,
                                wq=self._weight)

    def float_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The same deployed graph in float (the int8 graph's reference), no gradient."""
        from dlink.student import deployed_forward

        s = self.student
        with torch.no_grad():
            return deployed_forward(x, s.deployed_weights(), s.deployed_geometry())

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor, batch_size: int = 64) -> None:
        """Measure every activation range on ``x`` (calibration windows, model units)."""
        from dlink.student import deployed_forward

        s = self.student
        self.ranges, self.observing = {}, True
        w, g = s.deployed_weights(), s.deployed_geometry()
        try:
            for i in range(0, len(x), batch_size):
                deployed_forward(x[i:i + batch_size], w, g, q=self._act)
        finally:
            self.observing = False
        for r in self.ranges.values():  # an int8 range always represents 0 exactly
            r[0], r[1] = min(r[0], 0.0), max(r[1], 0.0)
