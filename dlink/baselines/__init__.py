"""Compact EEG baselines trained from scratch, for comparison with distilled students.

They take the same (B, C, T) input in µV/100 and are built, saved and loaded through
`dlink.student` (``build_student("eegnet", ...)``), so export works for any saved folder.
"""

from __future__ import annotations

from dlink.baselines.eegnet import EEGNet
from dlink.baselines.shallowconvnet import ShallowConvNet
from dlink.nn_utils import ModelEntry

BASELINES: dict[str, ModelEntry] = {
    "eegnet": ModelEntry("eegnet", EEGNet, {}, "baseline", "EEGNet-8,2 (Lawhern 2018)"),
    "shallowconvnet": ModelEntry(
        "shallowconvnet", ShallowConvNet, {}, "baseline", "ShallowConvNet (Schirrmeister 2017)"
    ),
    "shallowconvnet-relu6": ModelEntry(
        "shallowconvnet-relu6", ShallowConvNet, {"power": "relu6"}, "baseline",
        "ShallowConvNet with ReLU6 for square and log: int8-deployable"
    ),
}

__all__ = ["BASELINES", "EEGNet", "ShallowConvNet"]
