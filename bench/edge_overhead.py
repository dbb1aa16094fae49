"""Per-decision overhead of the streaming path with the model taken out.

    python bench/edge_overhead.py runs/pipeline-thr/export --allow-failed-gate

Times, in one process, one thread, data in cache (median of N calls): one push of one hop
through `StreamingClassifier` whose model returns a fixed result (buffering, window ops,
softmax, result object), and the window stage alone (`WindowStage.load_finite`: float32
copy, finiteness check, clip and scale). `dlink-edge profile`'s decision ratio adds the
model and the cache misses it causes; this is the part the runtime owns.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from edge_runtime.model import open_model
from edge_runtime.stream import StreamingClassifier


def _median_us(fn, *args, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e6)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir")
    ap.add_argument("--backend", default="onnx")
    ap.add_argument("--allow-failed-gate", action="store_true")
    ap.add_argument("-n", type=int, default=5000, help="calls per median")
    args = ap.parse_args()
    model = open_model(args.model_dir, backend=args.backend,
                       allow_failed_gate=args.allow_failed_gate)
    spec = model.manifest.input
    fixed = np.zeros((1, len(model.class_names)), np.float32)
    model.predict = lambda x: fixed  # the model taken out: what is left is the runtime's
    clf = StreamingClassifier(model)
    rng = np.random.default_rng(0)
    hop = rng.normal(0.0, 20.0, (spec.n_chans, spec.hop))  # µV
    samples = rng.normal(0.0, 20.0, (spec.n_chans, spec.n_times))  # µV, one window
    window = np.empty((spec.n_chans, spec.n_times), np.float32)
    push = _median_us(clf.push, hop, n=args.n)
    stage = _median_us(clf._window_stage.load_finite, window, samples, n=args.n)
    print(f"push of one hop, model a no-op: {push:.1f} µs (median of {args.n})")
    print(f"  of which the window stage (copy, finiteness, clip, scale): {stage:.1f} µs")


if __name__ == "__main__":
    main()
