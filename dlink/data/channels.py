"""Channel-name matching: one rule for the training loaders and the edge runtime.

This file exists twice, byte for byte: ``edge_runtime/channels.py`` and
``dlink/data/channels.py`` (``tests/test_channels.py`` fails if they differ). The runtime
may import nothing of ``dlink`` and ``dlink`` never imports the runtime, so the one rule is
a stdlib-only module copied by design rather than a third package: a board can vendor
``edge_runtime/`` on its own, and the test keeps the two copies from drifting.

The rule, for each channel name the model wants, over a recording's labels:

1. a user map (``--channel-map FILE``: model name -> recording label) wins;
2. else a label equal to the name;
3. else labels equal to it by *key*: case-folded, an ``EEG`` type prefix, BCI2000's
   trailing dots (``Fp1.``, ``T7..``), a reference suffix (``-REF``, ``-LE``, ``-RE``,
   ``-AR``, ``-AVG``, ``-A1``, ``-A2``, ``-M1``, ``-M2``) and blanks removed;
4. else the other name of the same electrode: old 10-20 T3/T4/T5/T6 = 10-10 T7/T8/P7/P8.

Two labels matching one name, or one label serving two names, is an error naming them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

ALIASES = {"t3": "t7", "t4": "t8", "t5": "p7", "t6": "p8"}  # old 10-20 -> 10-10 key
_OTHER = {**ALIASES, **{v: k for k, v in ALIASES.items()}}
_PREFIX = re.compile(r"^eeg[\s:_-]*")
_SUFFIX = re.compile(r"[\s_-]+(ref|le|re|ar|avg|a1|a2|m1|m2)$")


class ChannelMatchError(ValueError):
    """The recording's labels do not give every channel the model needs exactly once."""


def channel_key(label: str) -> str:
    """'EEG Fp1-REF' -> 'fp1'; 'T7..' -> 't7' (see the module docstring)."""
    s = label.strip().lower().rstrip(".")
    s = _PREFIX.sub("", s)
    s = _SUFFIX.sub("", s)
    return re.sub(r"\s+", "", s.rstrip("."))


@dataclass(frozen=True)
class ChannelMatch:
    """Where each wanted channel is in a recording."""

    wanted: tuple[str, ...]  # the model's names, in model order
    labels: tuple[str, ...]  # the recording label used for each
    picks: tuple[int, ...]  # index of that label in the recording
    how: tuple[str, ...]  # "exact", "key", "alias" or "map", per channel

    def describe(self) -> str:
        """One line: what was renamed, e.g. ``T3 <- 'T7..' (alias), Fp1 <- 'Fp1.'``."""
        moved = [f"{w} <- {lab!r}" + (f" ({h})" if h in ("alias", "map") else "")
                 for w, lab, h in zip(self.wanted, self.labels, self.how) if h != "exact"]
        n_exact = self.how.count("exact")
        if not moved:
            return f"all {n_exact} channels matched by name"
        return ", ".join(moved) + (f"; {n_exact} by name" if n_exact else "")


def match_channels(labels, wanted, channel_map: dict[str, str] | None = None) -> ChannelMatch:
    """Find each name of ``wanted`` among ``labels`` by the module's rule.

    Parameters
    ----------
    labels : the recording's channel labels, in file order.
    wanted : the channel names the model needs, in model order.
    channel_map : model name -> recording label, tried first (exact label).

    Raises
    ------
    ChannelMatchError : a name is missing or ambiguous, or a label serves two names.
    """
    labels, wanted, channel_map = list(labels), tuple(wanted), dict(channel_map or {})
    unknown = sorted(set(channel_map) - set(wanted))
    if unknown:
        raise ChannelMatchError(f"the channel map names {unknown}, which the model does not "
                                f"use; its channels are {list(wanted)}.")
    keys = [channel_key(lab) for lab in labels]
    picks, how, missing = [], [], []
    for name in wanted:
        found, kind = [], ""
        if name in channel_map:
            found, kind = [i for i, lab in enumerate(labels) if lab == channel_map[name]], "map"
            if not found:
                raise ChannelMatchError(f"the channel map sends {name} to {channel_map[name]!r}, "
                                        f"which is not a label of the recording: {labels}.")
        for kind_, key in (("exact", None), ("key", channel_key(name)),
                           ("alias", _OTHER.get(channel_key(name)))):
            if found:
                break
            if kind_ == "exact":
                found = [i for i, lab in enumerate(labels) if lab == name]
            elif key is not None:
                found = [i for i, k in enumerate(keys) if k == key]
            kind = kind_
        if len(found) > 1:
            raise ChannelMatchError(f"channel {name} matches several labels "
                                    f"{[labels[i] for i in found]}; name one with a channel map.")
        if found:
            picks.append(found[0])
            how.append(kind)
        else:
            missing.append(name)
    if missing:
        raise ChannelMatchError(f"the recording lacks channel(s) {missing} the model needs "
                                f"(also under other names); it has {labels}.")
    twice = sorted({labels[i] for i in picks if picks.count(i) > 1})
    if twice:
        raise ChannelMatchError(f"label(s) {twice} would serve two of the model's channels.")
    return ChannelMatch(wanted, tuple(labels[i] for i in picks), tuple(picks), tuple(how))


def parse_channel_map(text: str, source: str = "channel map") -> dict[str, str]:
    """A channel map from text: a JSON object, or lines ``MODEL_NAME = RECORDING_LABEL``
    (``#`` starts a comment; blank lines are skipped)."""
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ChannelMatchError(f"{source} is not valid JSON: {exc}") from exc
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
            raise ChannelMatchError(f"{source} must map channel names to labels (strings).")
        return dict(data)
    out: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, label = (part.strip() for part in line.partition("="))
        if not (sep and name and label):
            raise ChannelMatchError(f"{source} line {n} is not 'MODEL_NAME = RECORDING_LABEL': "
                                    f"{line!r}.")
        out[name] = label
    return out
