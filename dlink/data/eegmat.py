"""EEGMAT (PhysioNet `eegmat` 1.0.0): rest vs. mental arithmetic, 36 subjects.

Reference: Zyma I. et al., "Electroencephalograms during Mental Arithmetic Task
Performance", Data 4(1):14, 2019. ODC-By 1.0.

Each subject has ``SubjectNN_1.edf`` (rest, ~182 s) and ``SubjectNN_2.edf`` (task, ~62 s),
21 signals at 500 Hz. We keep the 19 scalp channels in 10-20 order, resample to 200 Hz and
cut non-overlapping 5 s windows: 1,275 rest + 432 task = 1,707 windows.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from dlink.console import track
from dlink.data.cache import cached
from dlink.data.checksums import read_registry
from dlink.data.conditioning import apply_conditioning, conditioning_ops
from dlink.data.edf import check_edf_complete, cut_windows, read_edf_uv
from dlink.data.paths import require_dataset_dir
from dlink.data.windows import Windows
from dlink.errors import DataNotFoundError

NAME = "eegmat"
FOLDER = "eegmat"
URL = "https://physionet.org/files/eegmat/1.0.0/"
CH_NAMES = (
    "Fp1",
    "Fp2",
    "F3",
    "F4",
    "F7",
    "F8",
    "T3",
    "T4",
    "C3",
    "C4",
    "T5",
    "T6",
    "P3",
    "P4",
    "O1",
    "O2",
    "Fz",
    "Cz",
    "Pz",
)
CLASS_NAMES = ["rest", "task"]
SOURCE_SFREQ = 500.0  # Hz, as recorded
REGISTRY = Path(__file__).with_name("registry") / "eegmat.txt"
_FILE = re.compile(r"Subject(\d\d)_([12])\.edf$")


def registry() -> dict[str, str]:
    """``{file name: sha256}`` of the official release."""
    return read_registry(REGISTRY)


def subject_ids() -> list[str]:
    return sorted({m.group(1) for n in registry() if (m := _FILE.match(n))})


def load(
    data_root: Path,
    sfreq: float = 200.0,
    window_s: float = 5.0,
    subjects: list[str] | None = None,
    use_cache: bool = True,
    strict: bool = False,
    conditioning: str = "none",
) -> Windows:
    """Windows of EEGMAT; see the module docstring. ``subjects``: e.g. ``["00", "01"]``.
    A truncated recording gets one warning line (its complete records are used), or is an
    error with ``strict``. ``conditioning``: a `dlink.data.conditioning` preset applied to
    each continuous recording at ``sfreq`` before windows are cut (default: none)."""
    folder = require_dataset_dir(data_root, FOLDER, NAME)
    wanted = subjects or subject_ids()
    files = [folder / f"Subject{s}_{k}.edf" for s in wanted for k in (1, 2)]
    params = {"sfreq": sfreq, "window_s": window_s, "subjects": wanted, "ch_names": CH_NAMES,
              "resample": "resample_poly"}
    ops = conditioning_ops(conditioning, sfreq)
    if ops:  # the default's cache key (and windows) stay as they were
        params["conditioning"] = {"name": conditioning, "ops": ops}
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise DataNotFoundError(
            f"{folder} lacks {len(missing)} recording(s) ({', '.join(missing[:3])}...): "
            f"run `dlink data fetch {NAME}`"
        )
    for f in files:  # before the cache, so that a cached truncated file still says so
        check_edf_complete(f, strict)
    build = lambda: _read(files, sfreq, window_s, params, ops)  # noqa: E731
    return cached(NAME, params, files, build, use_cache)


def _read(files: list[Path], sfreq: float, window_s: float, params: dict,
          ops: list[dict]) -> Windows:
    n_times = int(round(window_s * sfreq))
    X, y, subj = [], [], []
    for path in track(files, "Reading EEGMAT"):
        _, data = read_edf_uv(path, CH_NAMES, expected_sfreq=SOURCE_SFREQ, target_sfreq=sfreq,
                              quiet=True)
        w = cut_windows(apply_conditioning(data, ops).astype(np.float32) if ops else data,
                        n_times)
        m = _FILE.search(path.name)
        X.append(w)
        y.append(np.full(len(w), int(m.group(2)) - 1, dtype=np.int64))
        subj.append(np.full(len(w), m.group(1)))
    return Windows(
        X=np.concatenate(X),
        y=np.concatenate(y),
        subject=np.concatenate(subj),
        sfreq=sfreq,
        ch_names=list(CH_NAMES),
        class_names=list(CLASS_NAMES),
        name=NAME,
        info={"files": [f.name for f in files], "params": params, "source": URL},
    )


def expected_checksums(data_root: Path) -> dict[Path, str]:
    """``{local path: sha256}`` of every file of the official release."""
    folder = require_dataset_dir(data_root, FOLDER, NAME)
    return {folder / name: digest for name, digest in registry().items()}
