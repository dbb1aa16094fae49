"""`dlink-edge run --lsl`: a real EEGMAT recording played as a live LSL stream on loopback.

mne-lsl's `PlayerLSL` plays the recording; `dlink-edge` (a subprocess, the real CLI) reads
it and must decide exactly the windows the offline run of the same samples decides.
Hand-made outlets cover dropped samples, a stream that stops, one that vanishes, one that
never appears and one with the wrong channels. Needs mne-lsl (`dlink[lsl]`) and loopback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from edge_fixtures import CH_NAMES, cached_model_dir

pytest.importorskip("mne_lsl")
mne = pytest.importorskip("mne")

from mne_lsl.lsl import StreamInfo, StreamOutlet, local_clock  # noqa: E402
from mne_lsl.player import PlayerLSL  # noqa: E402

from edge_runtime.lsl import _lsl  # noqa: E402

_lsl()  # liblsl quiet in this process too (the players)

# the data root rule (conftest sets $DLINK_DATA_DIR from it before this module loads)
RECORDING = str(Path(os.environ["DLINK_DATA_DIR"]) / "eegmat" / "Subject00_2.edf")
SECONDS = 21.0  # of the recording streamed in real time (4 windows of 5 s, hop 1 s -> 17)


@pytest.fixture(scope="module")
def model_dir():
    return cached_model_dir()


class _PlayerAfterConsumer(PlayerLSL):
    """mne-lsl's player holding its first chunk until an inlet has connected: LSL never
    sends samples pushed before an inlet opened, and the comparison needs sample 0."""

    def _stream(self):
        if not getattr(self, "_consumer_seen", False):
            self._consumer_seen = self._outlet.wait_for_consumers(timeout=120)
            self._target_timestamp = local_clock()
        super()._stream()


def _cli(*args, timeout=60):
    return subprocess.Popen([sys.executable, "-m", "edge_runtime.cli", "run", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc, timeout=90):
    out, err = proc.communicate(timeout=timeout)
    lines = [json.loads(x) for x in out.splitlines() if x.strip()]
    decisions = [d for d in lines if "summary" not in d]
    summary = next((d["summary"] for d in lines if "summary" in d), None)
    return proc.returncode, decisions, summary, err


def _name() -> str:
    return f"dlink-test-{uuid.uuid4().hex[:8]}"


def test_live_stream_decisions_equal_the_offline_run(model_dir):
    from edge_runtime.model import open_model
    from edge_runtime.stream import classify_offline

    raw = mne.io.read_raw_edf(RECORDING, preload=True, verbose="error")
    raw.crop(0, SECONDS + 1.0)  # the player closes its outlet with its last chunk: stop before
    name = _name()
    player = _PlayerAfterConsumer(raw, chunk_size=40, n_repeat=1, name=name).start()
    try:
        proc = _cli(model_dir, "--lsl", name, "--hop", 200, "--jsonl", "--json",
                    "--duration", SECONDS, "--lsl-timeout", 5)
        code, decisions, summary, err = _finish(proc)
    finally:
        if player._executor is not None:  # still playing
            player.stop()
    assert code == 0, err
    assert "Traceback" not in err and "INFO|" not in err and "ERR|" not in err, err
    assert "T3 <- 'EEG T3'" in err  # the mapping used is printed

    n = int(SECONDS * raw.info["sfreq"])
    data = raw.get_data(picks=[f"EEG {c}" for c in CH_NAMES])[:, :n] * 1e6  # (19, N) µV, 500 Hz
    offline = classify_offline(open_model(model_dir), data, sfreq=raw.info["sfreq"], hop=200)
    assert len(offline) == 17
    assert [(d["stop"], d["label"]) for d in decisions] == [(r.stop, r.label) for r in offline]
    np.testing.assert_allclose([d["logits"] for d in decisions],
                               [r.logits for r in offline], atol=1e-4)

    lsl = summary["lsl"]
    assert lsl["samples_received"] == int(SECONDS * raw.info["sfreq"])
    assert lsl["samples_dropped"] == 0 and lsl["windows_decided"] == 17
    # the player stamps a chunk's last sample with its due time, up to one chunk (80 ms)
    # ahead of the push, so a decision can come "before" its last sample's time stamp
    assert -100 < lsl["latency_p50_ms"] <= lsl["latency_p95_ms"] < 1000


def _outlet(name, ch_names=CH_NAMES, sfreq=200.0, units="microvolts"):
    info = StreamInfo(name, "EEG", len(ch_names), sfreq, np.float32, uuid.uuid4().hex)
    info.set_channel_names(list(ch_names))
    info.set_channel_units(units)
    return StreamOutlet(info, chunk_size=20)


def _push_seconds(outlet, t0, start_s, seconds, sfreq=200.0):
    rng = np.random.default_rng(int(start_s * 10))
    n = int(seconds * sfreq)
    ts = t0 + (int(start_s * sfreq) + np.arange(n)) / sfreq
    outlet.push_chunk(rng.normal(0, 20, (n, outlet.n_channels)).astype(np.float32), ts)


def test_dropped_samples_are_counted_and_a_stopped_stream_ends_the_run(model_dir):
    name = _name()
    outlet = _outlet(name)
    proc = _cli(model_dir, "--lsl", name, "--jsonl", "--json", "--lsl-timeout", 1.5)
    assert outlet.wait_for_consumers(timeout=120)
    t0 = local_clock() - 11.5  # samples stamped as recorded over the last 11.5 s
    _push_seconds(outlet, t0, 0.0, 6.0)
    _push_seconds(outlet, t0, 6.5, 5.0)  # 0.5 s (100 samples) never sent
    started = time.monotonic()
    code, decisions, summary, err = _finish(proc)
    assert time.monotonic() - started < 60  # bounded (a loaded CI machine is slow)
    del outlet
    assert code == 4, err
    assert "stopped: no sample for 1.5 s" in err.strip().splitlines()[-1]
    assert "Traceback" not in err
    assert summary["lsl"]["samples_received"] == 2200
    assert summary["lsl"]["samples_dropped"] == 100
    assert summary["lsl"]["windows_decided"] == 2  # windows end at 5 s and 10 s (gap in #2)
    assert [d["accepted"] for d in decisions] == [True, False]


def test_a_vanished_stream_ends_the_run_with_a_message(model_dir):
    name = _name()
    outlet = _outlet(name)
    proc = _cli(model_dir, "--lsl", name, "--jsonl", "--lsl-timeout", 30)
    assert outlet.wait_for_consumers(timeout=120)
    _push_seconds(outlet, local_clock(), 0.0, 6.0)
    time.sleep(1.0)
    started = time.monotonic()
    outlet._del()  # the amplifier app closes its outlet (as PlayerLSL.stop does)
    code, decisions, summary, err = _finish(proc)
    assert time.monotonic() - started < 60  # bounded (a loaded CI machine is slow)
    assert code == 4, err
    assert "vanished" in err.strip().splitlines()[-1] and "Traceback" not in err


def test_missing_stream_and_wrong_channels_are_one_line_errors(model_dir):
    proc = _cli(model_dir, "--lsl", _name(), "--lsl-wait", 1)
    code, _, _, err = _finish(proc)
    assert code == 1 and err.strip().startswith("dlink-edge: error: no LSL stream named")
    assert len(err.strip().splitlines()) == 1

    name = _name()
    outlet = _outlet(name, ch_names=[f"X{i}" for i in range(19)])
    proc = _cli(model_dir, "--lsl", name)
    code, _, _, err = _finish(proc)
    del outlet
    assert code == 1 and "lacks channel(s)" in err and len(err.strip().splitlines()) == 1
