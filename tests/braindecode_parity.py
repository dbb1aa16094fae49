"""braindecode's real ``CBraMod`` class, importable without torchaudio; reference-key dump.

braindecode 1.8.1's package ``__init__`` files pull in skorch and, through
``braindecode.modules.filter`` and several models, torchaudio, which does not load beside
torch 2.13 from PyPI. ``CBraMod`` itself needs none of that. ``import_braindecode_cbramod``
registers the three packages on the path as bare namespaces (their ``__init__`` is not run),
imports the real ``braindecode/modules/attention.py`` and ``braindecode/models/cbramod.py``
files, and re-exports ``CrissCrossTransformerEncoderLayer`` on ``braindecode.modules``, as
its ``__init__`` would. No braindecode code is replaced.

Install (separate venv; the system torch is reused)::

    python -m venv /tmp/bd-venv --system-site-packages
    /tmp/bd-venv/bin/pip install --no-deps braindecode==1.8.1 einops==0.8.2 torchinfo==1.8.0 \
        docstring_inheritance==3.0.0 pandas==3.1.1 pytz==2026.6 tzdata==2026.6

Run the parity test::

    /tmp/bd-venv/bin/python -m pytest tests/test_teacher.py -k braindecode

Regenerate ``tests/data/cbramod_reference_keys.json``::

    /tmp/bd-venv/bin/python tests/braindecode_parity.py --dump
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
import types
from pathlib import Path

REFERENCE_KEYS = Path(__file__).parent / "data" / "cbramod_reference_keys.json"
BRAINDECODE_VERSION = "1.8.1"  # the version the reference keys were dumped from


def import_braindecode_cbramod() -> type:
    """braindecode's ``CBraMod`` class. Raises ImportError when braindecode is not installed."""
    if "braindecode.models.cbramod" in sys.modules:
        return sys.modules["braindecode.models.cbramod"].CBraMod
    spec = importlib.util.find_spec("braindecode")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("braindecode is not installed; see tests/braindecode_parity.py.")
    root = Path(list(spec.submodule_search_locations)[0])
    for name, folder in (("braindecode", root), ("braindecode.models", root / "models"),
                         ("braindecode.modules", root / "modules")):
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [str(folder)]  # a package whose __init__ is skipped
            sys.modules[name] = package
    attention = importlib.import_module("braindecode.modules.attention")
    sys.modules["braindecode.modules"].CrissCrossTransformerEncoderLayer = (
        attention.CrissCrossTransformerEncoderLayer
    )
    return importlib.import_module("braindecode.models.cbramod").CBraMod


def braindecode_version() -> str:
    return importlib.import_module("braindecode.version").__version__


def base_backbone(**kwargs):
    """braindecode's ``CBraMod`` with the released (base) architecture and no task head."""
    cls = import_braindecode_cbramod()
    return cls(n_outputs=2, n_chans=19, n_times=1000, return_encoder_output=True, **kwargs)


def dump_reference_keys(path: Path = REFERENCE_KEYS) -> dict:
    """Write braindecode base CBraMod's state_dict key names and shapes to ``path``."""
    model = base_backbone()
    ref = {
        "source": f"braindecode=={braindecode_version()} braindecode.models.CBraMod("
                  "return_encoder_output=True), default (base) architecture",
        "command": "python tests/braindecode_parity.py --dump  (venv: see its docstring)",
        "n_parameters": sum(v.numel() for v in model.state_dict().values()),
        "keys": {k: list(v.shape) for k, v in model.state_dict().items()},
    }
    head = {k: v for k, v in ref.items() if k != "keys"}
    lines = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in ref["keys"].items()]
    text = json.dumps(head, indent=1)[:-2] + ',\n "keys": {\n' + ",\n".join(lines) + "\n }\n}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return ref


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dump", action="store_true", help=f"rewrite {REFERENCE_KEYS.name}")
    args = parser.parse_args()
    if args.dump:
        ref = dump_reference_keys()
        print(f"wrote {REFERENCE_KEYS} ({len(ref['keys'])} keys, {ref['n_parameters']} params)")
    else:
        print(f"braindecode {braindecode_version()}: {import_braindecode_cbramod()}")
