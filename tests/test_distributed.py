"""`dlink pretrain` under the real torchrun CLI: 2 CPU processes (gloo) x B/2 = 1 process x B.

One torchrun launch (~20 s of the ~35 s here; a second one would double it) checks three
things: 1 process trains the tiny teacher for 3 epochs with batch 8 in this interpreter and
its checkpoint after epoch 1 is kept; ``torchrun --standalone --nproc_per_node=2 -m dlink.cli
pretrain ... --batch-size 8`` resumes that checkpoint (rank 0 reads it and sends it to rank 1)
and trains epochs 2-3 with 4 windows per process.

Equivalence: with dropout off, the loss curves agree to ``RTOL`` (measured: 4e-8 relative on
the training loss, validation loss identical). It is the same computation: the same global
batches, the same mask draw (sliced per process), DDP's averaged gradients, and the
masked-patch mean normalised by the global count (`dist.share_of_total`); what remains is
float32 summation order (two halves, then gloo's all-reduce). With dropout on, each process
draws its own dropout masks and the curves differ by sampling noise (~0.5 % here), so the
test turns dropout off. Weights are not compared: biases that cannot change the output
(before GroupNorm, attention key biases) get gradients of pure rounding noise, which Adam
scales to lr-sized steps in either run.

Rank 0 alone writes: the workers start with a ``sitecustomize`` that, on every rank but 0,
arms an audit hook failing any file creation, rename, mkdir or delete under the test folder
(and says so on stderr, which the test requires).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from dlink import training
from dlink.data import load_windows
from dlink.pretrain import PretrainConfig, pretrain

SUBJECTS = ["00", "01", "02", "03"]  # split: train 00, 01 (96 windows), val 02, test 03
ARGS = ["--preset", "tiny", "--subjects", ",".join(SUBJECTS), "--batch-size", "8", "--dropout", "0"]
RTOL = 1e-5  # float32 summation order over 24-36 AdamW steps; measured 4e-8
OUTPUTS = {"checkpoint.pt", "history.json", "loss_curve.png", "config.json", "model.safetensors",
           "pretrain.json", "MODEL_CARD.md"}

# Armed in each torchrun worker by Python's site module; only ranks != 0 are watched.
SITECUSTOMIZE = textwrap.dedent('''
    import os, sys
    _root = os.environ.get("DLINK_TEST_WATCH")
    _rank = os.environ.get("RANK")
    if _root and _rank not in (None, "0"):
        _WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
        _EVENTS = {"os.mkdir", "os.rename", "os.replace", "os.remove", "os.rmdir",
                   "os.link", "os.symlink", "os.truncate", "shutil.rmtree", "shutil.move"}

        def _hook(event, args):
            if event == "open":
                path, mode, flags = args
                writes = (any(c in mode for c in "wax+") if isinstance(mode, str)
                          else bool((flags or 0) & _WRITE_FLAGS))
            elif event in _EVENTS:
                path, writes = args[0], True
            else:
                return
            if writes and isinstance(path, (str, bytes, os.PathLike)):
                full = os.path.abspath(os.fsdecode(path))
                if full.startswith(_root + os.sep):
                    raise PermissionError(f"rank {_rank} wrote {full}; only rank 0 may write")

        sys.addaudithook(_hook)
        try:
            open(os.path.join(_root, "probe"), "w")
        except PermissionError:
            print(f"rank {_rank}: write guard armed", file=sys.stderr)
''')


def _torchrun(tmp_path, *args: str) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --standalone --nproc_per_node=2 -m dlink.cli ...``."""
    hook_dir = tmp_path.parent / f"{tmp_path.name}-site"
    hook_dir.mkdir(exist_ok=True)
    (hook_dir / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = dict(os.environ, DLINK_THREADS="1", DLINK_DEVICE="cpu", DLINK_TEST_WATCH=str(tmp_path),
               PYTHONPATH=os.pathsep.join([str(hook_dir), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "dlink.cli", *args]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    assert "rank 1: write guard armed" in proc.stderr, proc.stderr[-2000:]
    return proc


def _reference(out, epochs: int, keep_first: Path | None = None) -> list[dict]:
    """One process, batch 8, in this interpreter (the code `dlink pretrain` runs); with
    ``keep_first``, a copy of the checkpoint written after epoch 1 goes there."""
    torch.set_num_threads(1)
    windows = load_windows("eegmat", subjects=SUBJECTS)
    save = training.save_checkpoint

    def save_and_keep(path, state):
        save(path, state)
        if keep_first is not None and state["epoch"] == 0:
            keep_first.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, keep_first)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DLINK_DEVICE", "cpu")
        mp.setattr(training, "save_checkpoint", save_and_keep)
        pretrain(windows, out, PretrainConfig(preset="tiny", epochs=epochs, batch_size=8, dropout=0.0))
    return json.loads((out / "history.json").read_text())


def _assert_same_curve(one: list[dict], two: list[dict]) -> None:
    assert len(one) == len(two)
    for a, b in zip(one, two):
        for part in ("train", "val"):
            for k in a[part]:
                assert b[part][k] == pytest.approx(a[part][k], rel=RTOL), (a["epoch"], part, k)


def test_global_batches_give_every_process_an_equal_share():
    for n, batch, world in [(96, 8, 2), (97, 8, 2), (101, 16, 3), (10, 8, 4)]:
        batches = training.epoch_batches(n, batch, 0, 1, world)
        assert all(len(b) % world == 0 and len(b) >= 2 * world for b in batches)
        assert n - sum(map(len, batches)) < batch  # at most the last batch shrinks
    one, two = training.epoch_batches(96, 8, 0, 1), training.epoch_batches(96, 8, 0, 1, world=2)
    assert all((a == b).all() for a, b in zip(one, two))  # same windows when B divides evenly
    assert [len(b) for b in training.epoch_batches(9, 4, 0, 0)] == [4, 4]  # one process: last 1 dropped


@pytest.fixture(scope="module")
def runs(shared_data, tmp_path_factory):
    """1 process x 8 windows for 3 epochs in this interpreter; then torchrun, 2 processes x 4
    through the CLI, resumes that run's epoch-1 checkpoint and trains epochs 2 and 3."""
    root = tmp_path_factory.mktemp("ddp")
    one = _reference(root / "one", epochs=3, keep_first=root / "two" / "checkpoint.pt")
    proc = _torchrun(root, "pretrain", *ARGS, "--epochs", "3", "--out", "two")
    return root, one, proc


def test_torchrun_pretrain_matches_one_process(runs):
    root, one, _ = runs
    _assert_same_curve(one, json.loads((root / "two" / "history.json").read_text()))


def test_torchrun_resumed_from_the_checkpoint(runs):
    _, _, proc = runs
    log = proc.stdout + proc.stderr
    assert "epoch 1:" not in log and "epoch 2:" in log and "epoch 3:" in log


def test_only_rank_zero_writes(runs):
    root, _, proc = runs
    assert {p.name for p in (root / "two").iterdir()} == OUTPUTS
    assert {p.name for p in root.iterdir()} == {"one", "two"}  # no stray files, no probe
    assert proc.stdout.count("pretrained cbramod-tiny") == 1  # one summary line (rank 0's)


@pytest.mark.slow
def test_every_stage_runs_fresh_under_torchrun(shared_data, tmp_path):
    """pretrain (same curve as 1 process) -> finetune -> distill, each started fresh by torchrun."""
    one = _reference(tmp_path / "one", epochs=2)
    _torchrun(tmp_path, "pretrain", *ARGS, "--epochs", "2", "--out", "pre")
    _assert_same_curve(one, json.loads((tmp_path / "pre" / "history.json").read_text()))
    shutil.rmtree(tmp_path / "one")
    subjects = ["--subjects", ",".join(SUBJECTS), "--batch-size", "8", "--epochs", "1"]
    _torchrun(tmp_path, "finetune", "--teacher", "pre", *subjects, "--out", "ft")
    _torchrun(tmp_path, "distill", "--teacher", "ft", "--student", "mic-xs", *subjects, "--out", "st")
    written = {p.name for p in (tmp_path / "st").iterdir()}
    assert {"metrics.json", "model.safetensors", "router_weights.npz"} <= written
    assert json.loads((tmp_path / "ft" / "metrics.json").read_text())["selected_epoch"] == 1
