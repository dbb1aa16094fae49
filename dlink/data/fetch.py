"""Download the official PhysioNet files with sha256 verification (pooch / MNE machinery).

Atomic: pooch downloads to a temporary file in the target folder and renames it only after
its sha256 matched; a mismatching download is deleted. Resumable: files already present
with the right sha256 are skipped, so an interrupted fetch continues where it stopped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from dlink.data import eegmat, eegmmidb
from dlink.errors import ChecksumError, ConfigError, DLinkError

Progress = Callable[[str], None]


def _quiet_pooch() -> None:
    import pooch

    pooch.get_logger().setLevel(logging.WARNING)


def _translate(exc: Exception, what: str) -> DLinkError:
    text = str(exc)
    if "hash" in text.lower() and "match" in text.lower():
        return ChecksumError(
            f"{what} failed its sha256 check and was discarded; "
            "the mirror may be corrupted, try again or another --base-url"
        )
    return DLinkError(f"could not download {what}: {text.splitlines()[0] if text else exc!r}")


def fetch_eegmat(
    root: Path,
    base_url: str | None = None,
    subjects: Iterable[str] | None = None,
    on_file: Progress | None = None,
) -> list[Path]:
    """Fetch EEGMAT into ``root/eegmat``; ``subjects`` like ``["00", "01"]`` (default all)."""
    import pooch

    _quiet_pooch()
    reg = eegmat.registry()
    if subjects is None:
        names = sorted(reg)
    else:
        unknown = sorted(set(subjects) - set(eegmat.subject_ids()))
        if unknown:
            raise ConfigError(f"unknown EEGMAT subject(s) {', '.join(unknown)}; use 00..35")
        names = [f"Subject{s}_{k}.edf" for s in sorted(subjects) for k in (1, 2)]
    fetcher = pooch.create(
        path=root / eegmat.FOLDER,
        base_url=base_url or eegmat.URL,
        registry={n: f"sha256:{reg[n]}" for n in names},
        retry_if_failed=2,
    )
    paths = []
    for name in names:
        if on_file:
            on_file(name)
        try:
            paths.append(Path(fetcher.fetch(name)))
        except Exception as exc:
            raise _translate(exc, name) from exc
    return paths


def fetch_eegmmidb(
    root: Path,
    base_url: str | None = None,
    subjects: Iterable[int] | None = None,
    on_file: Progress | None = None,
) -> list[Path]:
    """Fetch the motor-imagery runs into MNE's layout under ``root`` (checksums from MNE)."""
    from mne.datasets import eegbci

    _quiet_pooch()
    paths = []
    for s in subjects or [1]:
        for run in eegmmidb.RUNS:
            if on_file:
                on_file(f"S{int(s):03d}R{run:02d}.edf")
            try:
                paths += eegbci.load_data(
                    int(s),
                    [run],
                    path=root,
                    update_path=False,
                    base_url=base_url or eegmmidb.URL,
                    verbose="error",
                )
            except Exception as exc:
                raise _translate(exc, f"S{int(s):03d}R{run:02d}") from exc
    return [Path(p) for p in paths]


FETCHERS = {"eegmat": fetch_eegmat, "eegmmidb": fetch_eegmmidb}


def fetch(name: str, root: Path, **kwargs) -> list[Path]:
    """Fetch data set ``name`` into the data root; see `FETCHERS` for what exists."""
    if name not in FETCHERS:
        raise ConfigError(f"cannot fetch '{name}': known data sets are {', '.join(FETCHERS)}")
    root.mkdir(parents=True, exist_ok=True)
    return FETCHERS[name](root, **kwargs)
