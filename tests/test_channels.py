"""One channel-name rule for training and the board; truncated EDFs said in DLink's words.

Real files: EEGMAT (``EEG Fp1`` labels, old T3..T6 names) and PhysioNet-MI subject 1
(BCI2000 labels ``Fp1.``, ``T7..``, 64 channels at 160 Hz).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from edge_fixtures import CH_NAMES, EEG_FILE, cached_model_dir

from edge_runtime import channels

ROOT = Path(__file__).resolve().parents[1]
MI_FILE = Path("/work/shared/data/MNE-eegbci-data/files/eegmmidb/1.0.0/S001/S001R04.edf")


def test_the_rule_is_one_file_in_two_places():
    a = (ROOT / "edge_runtime" / "channels.py").read_bytes()
    b = (ROOT / "dlink" / "data" / "channels.py").read_bytes()
    assert a == b, "edge_runtime/channels.py and dlink/data/channels.py must stay identical"


@pytest.mark.parametrize("label, name", [
    ("EEG Fp1", "Fp1"), ("FP1", "Fp1"), ("fp1", "Fp1"), ("Fp1.", "Fp1"), ("T7..", "T3"),
    ("T3", "T7"), ("T8..", "T4"), ("P7", "T5"), ("EEG T6-REF", "P8"), ("Cz-LE", "Cz"),
    ("EEG O2-AVG", "O2"), ("eeg pz", "Pz"), ("Fcz.", "FCz"),
])
def test_aliases_match(label, name):
    m = channels.match_channels(["ECG ECG", label], (name,))
    assert m.picks == (1,) and m.labels == (label,)
    assert m.how[0] == ("exact" if label == name else "alias" if m.how[0] == "alias" else "key")


def test_exact_names_win_and_ambiguity_and_missing_are_errors():
    assert channels.match_channels(["T7", "T3"], ("T3", "T7")).how == ("exact", "exact")
    with pytest.raises(channels.ChannelMatchError, match="several labels"):
        channels.match_channels(["EEG Fp1", "Fp1-REF"], ("FP1",))
    with pytest.raises(channels.ChannelMatchError, match=r"lacks channel\(s\) \['Oz'\]"):
        channels.match_channels(["Fp1"], ("Fp1", "Oz"))


def test_channel_map_files(tmp_path):
    assert channels.parse_channel_map("# mine\nOz = E17\n\nFp1=E1 ") == {"Oz": "E17", "Fp1": "E1"}
    assert channels.parse_channel_map('{"Oz": "E17"}') == {"Oz": "E17"}
    with pytest.raises(channels.ChannelMatchError, match="line 1"):
        channels.parse_channel_map("Oz E17")
    m = channels.match_channels(["E1", "E17"], ("Fp1", "Oz"), {"Oz": "E17", "Fp1": "E1"})
    assert m.picks == (0, 1) and m.how == ("map", "map")
    assert "Oz <- 'E17' (map)" in m.describe()


def test_training_loader_uses_the_rule_on_a_physionet_mi_file():
    from dlink.data.edf import read_edf_uv

    _, data = read_edf_uv(MI_FILE, CH_NAMES, target_sfreq=200.0)
    assert data.shape == (19, 25000)  # 125 s at 200 Hz, EEGMAT montage from BCI2000 labels


def _edge(*args):
    return subprocess.run([sys.executable, "-m", "edge_runtime.cli", "run", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_physionet_mi_edf_runs_through_an_eegmat_montage_model():
    proc = _edge(cached_model_dir(), "--edf", MI_FILE, "--jsonl")
    assert proc.returncode == 0, proc.stderr
    assert "T3 <- 'T7..' (alias)" in proc.stderr and "T6 <- 'P8..' (alias)" in proc.stderr
    assert len(proc.stdout.splitlines()) == 25  # 125 s resampled 160 -> 200 Hz, 5 s windows
    assert "Traceback" not in proc.stderr


def test_channel_map_flag(tmp_path):
    renamed = tmp_path / "renamed.edf"
    import edfio

    edf = edfio.read_edf(EEG_FILE)
    for i, sig in enumerate(edf.signals):
        if sig.label == "EEG Cz":
            sig.label = "E55"
    edf.write(renamed)
    proc = _edge(cached_model_dir(), "--edf", renamed, "--duration", 10)
    assert proc.returncode == 1 and "lacks channel(s) ['Cz']" in proc.stderr
    cmap = tmp_path / "map.txt"
    cmap.write_text("Cz = E55\n")
    proc = _edge(cached_model_dir(), "--edf", renamed, "--duration", 10, "--channel-map", cmap)
    assert proc.returncode == 0, proc.stderr
    assert "Cz <- 'E55' (map)" in proc.stderr


def _truncate(tmp_path, records: int) -> Path:
    data = EEG_FILE.read_bytes()
    header = int(data[184:192])
    record = (len(data) - header) // int(data[236:244])
    path = tmp_path / "cut.edf"
    path.write_bytes(data[: header + records * record + record // 3])  # + a partial record
    return path


def test_truncated_edf_gets_one_dlink_line_and_strict_fails(tmp_path):
    path = _truncate(tmp_path, 13)
    promised = int(EEG_FILE.read_bytes()[236:244])
    proc = _edge(cached_model_dir(), "--edf", path, "--jsonl")
    assert proc.returncode == 0, proc.stderr
    note = [ln for ln in proc.stderr.splitlines() if "truncated" in ln]
    assert note == [f"dlink-edge: cut.edf is truncated: {promised - 13} s of the {promised} s "
                    f"its header promises are missing; using the first 13 s."]
    assert "Warning" not in proc.stderr and "warn" not in proc.stderr.lower()
    assert len(proc.stdout.splitlines()) == 2  # 13 s -> two 5 s windows
    proc = _edge(cached_model_dir(), "--edf", path, "--strict")
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"dlink-edge: error: cut.edf is truncated: {promised - 13} s of the {promised} s its "
        "header promises are missing (--strict)."]


def test_training_loader_follows_the_same_truncation_rule(tmp_path, capsys):
    from dlink.data.edf import read_edf_uv
    from dlink.errors import DataFormatError

    path = _truncate(tmp_path, 13)
    _, data = read_edf_uv(path, CH_NAMES, target_sfreq=200.0)
    assert data.shape == (19, 13 * 200)
    full = read_edf_uv(EEG_FILE, CH_NAMES, target_sfreq=200.0)[1]
    assert np.abs(data[:, :2000] - full[:, :2000]).max() < 1e-2  # same samples (edge effects aside)
    err = capsys.readouterr().err
    assert "cut.edf is truncated" in err and "missing" in err
    with pytest.raises(DataFormatError, match="truncated"):
        read_edf_uv(path, CH_NAMES, strict=True)
