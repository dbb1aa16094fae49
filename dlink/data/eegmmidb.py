"""EEG Motor Movement/Imagery (PhysioNet `eegmmidb` 1.0.0), read through MNE's cache layout.

Reference: Schalk G. et al., "BCI2000: A General-Purpose Brain-Computer Interface (BCI)
System", IEEE TBME 51(6), 2004. ODC-By 1.0.

Motor-imagery runs only: 4/8/12 (T1 left fist, T2 right fist) and 6/10/14 (T1 both fists,
T2 both feet); one window 0-4 s after each cue, 64 channels, resampled to 200 Hz.
Subject 1 gives 45 trials per task (3 runs x 15 cues).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dlink.console import track
from dlink.data.cache import cached
from dlink.data.edf import check_edf_complete, edf_shortfall, read_raw_quietly, resample_uv
from dlink.data.paths import require_dataset_dir
from dlink.data.windows import Windows
from dlink.errors import DataFormatError, DataNotFoundError

NAME = "eegmmidb"
FOLDER = "MNE-eegbci-data"
URL = "https://physionet.org/files/eegmmidb/1.0.0/"
CLASS_NAMES = ["left_fist", "right_fist", "both_fists", "both_feet"]
RUNS = {4: (0, 1), 8: (0, 1), 12: (0, 1), 6: (2, 3), 10: (2, 3), 14: (2, 3)}  # run: (T1, T2)


def run_path(data_root: Path, subject: int, run: int) -> Path:
    return (
        data_root
        / FOLDER
        / "files"
        / "eegmmidb"
        / "1.0.0"
        / f"S{subject:03d}"
        / f"S{subject:03d}R{run:02d}.edf"
    )


def load(
    data_root: Path,
    sfreq: float = 200.0,
    window_s: float = 4.0,
    subjects: list[int] | None = None,
    use_cache: bool = True,
    strict: bool = False,
) -> Windows:
    """Motor-imagery trials of the given subjects (default: subject 1). A truncated run
    gets one warning line (its complete records are used), or is an error with ``strict``."""
    require_dataset_dir(data_root, FOLDER, NAME)
    subjects = [int(s) for s in (subjects or [1])]
    files = [run_path(data_root, s, r) for s in subjects for r in RUNS]
    missing = [f.name for f in files if not f.is_file()]
    if missing:  # checked here so that MNE never starts a download
        raise DataNotFoundError(
            f"{data_root / FOLDER} lacks {', '.join(missing)}: run `dlink data fetch {NAME}`"
        )
    params = {"sfreq": sfreq, "window_s": window_s, "subjects": subjects, "runs": list(RUNS),
              "resample": "resample_poly"}
    for f in files:  # before the cache, so that a cached truncated file still says so
        check_edf_complete(f, strict)
    build = lambda: _read(data_root, subjects, sfreq, window_s, files, params)  # noqa: E731
    return cached(NAME, params, files, build, use_cache)


def _read(data_root: Path, subjects: list[int], sfreq: float, window_s: float, files: list[Path],
          params: dict) -> Windows:
    import mne
    from mne.datasets import eegbci

    n_times = int(round(window_s * sfreq))
    X, y, subj, ch_names = [], [], [], None
    for s in track(subjects, "Reading eegmmidb"):
        paths = eegbci.load_data(s, list(RUNS), path=data_root, update_path=False, verbose="error")
        for path in map(Path, paths):
            run = int(path.stem[-2:])
            raw = read_raw_quietly(path)
            present_s = edf_shortfall(path)[1]
            if raw.times[-1] >= present_s:  # never the padding of an incomplete last record
                raw.crop(0, present_s, include_tmax=False)
            eegbci.standardize(raw)
            if not np.isfinite(raw.get_data()).all():
                raise DataFormatError(f"{path.name} has NaN/Inf samples")
            events, _ = mne.events_from_annotations(
                raw, event_id={"T1": 1, "T2": 2}, verbose="error"
            )
            src = raw.info["sfreq"]
            data = resample_uv(raw.get_data() * 1e6, src, sfreq)  # (C, T) µV, the board's rule
            starts = np.round((events[:, 0] - raw.first_samp) * sfreq / src).astype(int)
            keep = starts + n_times <= data.shape[1]  # a cue too close to the end has no window
            classes = RUNS[run]
            X.append(np.stack([data[:, i : i + n_times] for i in starts[keep]]).astype(np.float32))
            y.append(np.array([classes[e - 1] for e in events[keep, 2]], dtype=np.int64))
            subj.append(np.full(int(keep.sum()), f"S{s:03d}"))
            ch_names = list(raw.ch_names)
    return Windows(
        X=np.concatenate(X),
        y=np.concatenate(y),
        subject=np.concatenate(subj),
        sfreq=sfreq,
        ch_names=ch_names,
        class_names=list(CLASS_NAMES),
        name=NAME,
        info={"files": [f.name for f in files], "params": params, "source": URL},
    )


def expected_checksums(data_root: Path, subjects: list[int] | None = None) -> dict[Path, str]:
    """``{local path: sha256}`` of the motor-imagery runs, from the sums MNE ships."""
    import mne

    require_dataset_dir(data_root, FOLDER, NAME)
    sums_file = Path(mne.__file__).parent / "data" / "eegbci_checksums.txt"
    sums = dict(line.split() for line in sums_file.read_text().splitlines() if line.strip())
    paths = [run_path(data_root, int(s), r) for s in (subjects or [1]) for r in RUNS]
    return {p: sums[f"{p.parent.name}/{p.name}"] for p in paths}
