"""CBraMod teacher: shapes, weight-format compatibility, safe loading, braindecode parity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dlink.errors import CheckpointError, ConfigError
from dlink.signal import SignalSpec
from dlink.teacher import (
    PRESETS,
    CBraMod,
    Teacher,
    cbramod,
    create_teacher,
    list_teachers,
    load_teacher,
    patchify,
    read_teacher_config,
    save_teacher,
)
from dlink.teacher.io import from_braindecode

REFERENCE = Path(__file__).parent / "data" / "cbramod_reference_keys.json"


def _x(C: int = 3, N: int = 2, B: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, C, N * 200, generator=g)  # (B, C, T), µV / 100


@pytest.fixture
def tiny() -> CBraMod:
    torch.manual_seed(0)
    return cbramod("tiny", n_outputs=3).eval()


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_shapes_and_round_trip(preset, tmp_path):
    torch.manual_seed(0)
    model = create_teacher(preset, n_outputs=4).eval()
    assert isinstance(model, Teacher)
    x = patchify(_x(C=2, N=2, B=1))  # (1, 2, 2, 200)
    with torch.no_grad():
        layers = model.forward_layers(x)
        feats = model.forward_features(x)
        logits = model(x)
    assert len(layers) == model.n_layers == PRESETS[preset].n_layer
    assert all(h.shape == (1, 2, 2, model.d_model) for h in layers)
    torch.testing.assert_close(layers[-1], feats, rtol=0, atol=0)
    assert logits.shape == (1, 4)
    assert model.forward_head(feats, pre_logits=True).shape == (1, model.d_model)

    loaded = load_teacher(save_teacher(model, tmp_path / preset))
    assert loaded.cfg == model.cfg and loaded.n_outputs == 4 and not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), logits, rtol=0, atol=0)


def test_registry_lists_presets():
    assert list_teachers() == ["cbramod-base", "cbramod-small", "cbramod-tiny"]
    assert create_teacher("cbramod-tiny").cfg == PRESETS["tiny"]
    with pytest.raises(ConfigError, match="choose from"):
        create_teacher("labram-base")


def test_base_matches_braindecode_reference_keys():
    """Our backbone keys and shapes are braindecode's (= the official release's)."""
    ref = json.loads(REFERENCE.read_text())
    ours = {k: list(v.shape) for k, v in cbramod("base").backbone_state_dict().items()}
    assert ours == ref["keys"]
    assert sum(torch.Size(s).numel() for s in ours.values()) == ref["n_parameters"] == 4_924_000


def test_no_head_and_reset_classifier(tiny):
    x = patchify(_x())
    headless = cbramod("tiny")
    assert headless(x).shape == (2, 40)  # n_outputs=0: pooled features
    headless.reset_classifier(5)
    assert headless(x).shape == (2, 5)


def test_layers_head_mixes_every_depth_and_round_trips(tiny, tmp_path):
    """The ``layers`` head: uniform mixing logits at first, a mix concentrated on the last
    layer is the ``channel`` head, and the mix survives save/load (under ``head.*``)."""
    x = patchify(_x())
    tiny.reset_classifier(2, "layers", n_chans=3)
    tiny.eval()  # the fresh head's BatchNorm: running statistics
    assert torch.equal(tiny.head.mix, torch.zeros(tiny.n_layers + 1))
    assert "head.mix" not in tiny.backbone_state_dict() and "head.mix" in tiny.state_dict()
    with torch.no_grad():
        tiny.head.mix[:] = torch.tensor([-1e4] * tiny.n_layers + [1e4])  # last layer only
    channel = cbramod("tiny", n_outputs=2, head="channel", n_chans=3).eval()
    channel.load_state_dict({k: v for k, v in tiny.state_dict().items() if k != "head.mix"})
    assert torch.allclose(tiny(x), channel(x))
    with torch.no_grad():
        tiny.head.mix[:] = torch.tensor([1e4] + [-1e4] * tiny.n_layers)  # embedding only
    emb = tiny.patch_embedding(x)
    assert torch.allclose(tiny.forward_features(x), emb)
    save_teacher(tiny, tmp_path / "t")
    back = load_teacher(tmp_path / "t").eval()
    assert back.head_kind == "layers" and torch.allclose(back(x), tiny(x))
    with pytest.raises(ConfigError, match="n_chans"):
        cbramod("tiny", n_outputs=2, head="layers")


def test_layers_head_needs_every_layer_trainable(tmp_path):
    from dlink.finetune import FinetuneConfig, finetune

    with pytest.raises(ConfigError, match="frozen_layers=0"):  # before any data is touched
        finetune(None, None, None, tmp_path, FinetuneConfig(head="layers", frozen_layers=1))


@pytest.mark.parametrize("head", ["channel", "layers"])
def test_distillation_cache_takes_the_teachers_own_layers_and_logits(tiny, head):
    """`cache_teacher` keeps the layers and the logits the teacher itself gives (one pass), a
    ``layers`` head's mix over the patch embedding and every layer included."""
    from dlink.data import Windows
    from dlink.distill import cache_teacher

    tiny.reset_classifier(2, head, n_chans=3)
    tiny.eval()
    if head == "layers":
        with torch.no_grad():
            tiny.head.mix[:] = torch.arange(tiny.n_layers + 1.0)
    X = (_x(B=4) * 100).numpy()  # µV
    windows = Windows(X=X, y=np.array([0, 1, 0, 1]), subject=np.array(["a"] * 4), sfreq=200.0,
                      ch_names=["C3", "Cz", "C4"], class_names=["rest", "task"], name="t")
    x = patchify(torch.from_numpy(X * 0.01))
    with torch.no_grad():
        cache = cache_teacher(tiny, windows)
        assert torch.allclose(cache.logits, tiny(x), atol=1e-5)
        expected = torch.stack(tiny.forward_layers(x), dim=1).half()
        torch.testing.assert_close(cache.layers, expected)


def test_mask_replaces_patches_with_mask_token(tiny):
    x = patchify(_x())  # (2, 3, 2, 200)
    mask = torch.ones(x.shape[:3])  # (B, C, N): every patch masked; the token is zeros
    with torch.no_grad():
        torch.testing.assert_close(tiny.forward_layers(x, mask)[-1],
                                   tiny.forward_features(torch.zeros_like(x)))
    assert x.abs().sum() > 0  # the input itself is untouched


def test_bad_inputs_and_configs_say_what_to_do(tiny):
    with pytest.raises(ConfigError, match="multiple of patch_size=200"):
        patchify(torch.zeros(1, 3, 250))
    with pytest.raises(ConfigError, match="patchify"):
        tiny(torch.zeros(1, 3, 400))
    with pytest.raises(ConfigError, match="d_model=30"):
        cbramod("tiny", d_model=30)
    with pytest.raises(ConfigError, match="unknown CBraMod preset"):
        cbramod("huge")
    with pytest.raises(ConfigError, match="known fields"):
        cbramod("tiny", depth=3)


# --- official / braindecode state dicts ----------------------------------------------------
def test_official_pth_loads_strictly_with_fresh_head(tiny, tmp_path):
    path = tmp_path / "pretrained_weights.pth"
    torch.save(tiny.backbone_state_dict(), path)  # what the release ships: backbone only
    loaded = load_teacher(path, n_outputs=2)  # preset inferred from shapes
    assert loaded.cfg == PRESETS["tiny"] and loaded.n_outputs == 2
    x = patchify(_x())
    with torch.no_grad():
        torch.testing.assert_close(loaded.forward_features(x), tiny.forward_features(x))


def test_braindecode_key_mapping_drops_only_final_layer(tiny, tmp_path):
    sd = {**tiny.backbone_state_dict(), "final_layer.1.weight": torch.zeros(2, 2400),
          "final_layer.1.bias": torch.zeros(2)}
    with pytest.warns(UserWarning, match="final_layer"):
        mapped = from_braindecode(sd)
    assert mapped.keys() == tiny.backbone_state_dict().keys()
    torch.save(sd, tmp_path / "bd.pth")
    with pytest.warns(UserWarning, match="final_layer"):
        assert load_teacher(tmp_path / "bd.pth", preset="tiny").cfg == PRESETS["tiny"]


def test_mismatch_is_one_error_listing_every_key(tiny, tmp_path):
    sd = tiny.backbone_state_dict()
    del sd["proj_out.0.bias"]
    sd["encoder.extra.weight"] = torch.zeros(1)
    sd["patch_embedding.mask_encoding"] = torch.zeros(7)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as info:
        load_teacher(tmp_path / "bad.pth", preset="tiny")
    msg = str(info.value)
    assert "missing (1): ['proj_out.0.bias']" in msg
    assert "unexpected (1): ['encoder.extra.weight']" in msg
    assert "patch_embedding.mask_encoding: checkpoint (7,) vs model (200,)" in msg


def test_wrong_preset_is_reported(tiny, tmp_path):
    torch.save(tiny.backbone_state_dict(), tmp_path / "tiny.pth")
    with pytest.raises(CheckpointError, match="mis-shaped"):
        load_teacher(tmp_path / "tiny.pth", preset="small")


class _Payload:
    """Unpickling this runs code: it creates the file ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def test_pickled_code_is_refused_and_not_run(tiny, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({**tiny.backbone_state_dict(), "x": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match=r"\(exec\), which we refuse to unpickle"):
        load_teacher(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # control: the payload is real
    assert marker.exists()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupted_files_raise_checkpoint_error(tiny, tmp_path, damage):
    path = tmp_path / "w.pth"
    torch.save(tiny.backbone_state_dict(), path)
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00junk" * 50,
                      "empty": b""}[damage])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_teacher(path)


def test_truncated_safetensors_in_folder(tiny, tmp_path):
    folder = save_teacher(tiny, tmp_path / "t")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_teacher(folder)


def test_missing_path_and_non_state_dict(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_teacher(tmp_path / "nope.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="not a state_dict"):
        load_teacher(tmp_path / "list.pth")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        load_teacher(tmp_path / "empty_dir")


# --- our folder format ---------------------------------------------------------------------
def test_folder_keeps_signal_and_extras(tiny, tmp_path):
    spec = SignalSpec(ch_names=("Fz", "Cz", "Pz"), sfreq=200.0, n_times=400)
    folder = save_teacher(tiny, tmp_path / "t", extra_config={"class_names": ["a", "b", "c"]},
                          signal=spec)
    meta = read_teacher_config(folder)
    assert meta["format"] == "dlink.teacher" and meta["preset"] == "tiny"
    assert meta["extra"] == {"class_names": ["a", "b", "c"]}
    assert load_teacher(folder).signal == spec
    with pytest.raises(CheckpointError, match="n_outputs=3"):
        load_teacher(folder, n_outputs=2)
    with pytest.raises(CheckpointError, match="preset 'tiny'"):
        load_teacher(folder, preset="base")


def test_state_dict_with_our_head_is_refused(tiny, tmp_path):
    torch.save(tiny.state_dict(), tmp_path / "full.pth")
    with pytest.raises(CheckpointError, match="folder"):
        load_teacher(tmp_path / "full.pth")


# --- braindecode parity (needs braindecode; see tests/braindecode_parity.py) ---------------
def _braindecode():
    try:
        import braindecode_parity
        braindecode_parity.import_braindecode_cbramod()
    except ImportError as exc:
        pytest.skip(f"braindecode not importable ({exc}); see tests/braindecode_parity.py")
    return braindecode_parity


def test_braindecode_reference_keys_are_current():
    bp = _braindecode()
    keys = {k: list(v.shape) for k, v in bp.base_backbone().state_dict().items()}
    assert keys == json.loads(REFERENCE.read_text())["keys"]


def test_braindecode_weights_give_braindecode_outputs(tmp_path):
    bp = _braindecode()
    torch.manual_seed(0)
    theirs = bp.base_backbone().eval()  # random init
    path = tmp_path / "braindecode.pth"
    torch.save(theirs.state_dict(), path)
    ours = load_teacher(path, n_outputs=2)  # strict, preset inferred: base
    x = patchify(_x(C=19, N=3, B=2))
    with torch.no_grad():
        expected = theirs.encoder(theirs.patch_embedding(theirs.rearrange(x.flatten(2))))
        layers = ours.forward_layers(x)
        torch.testing.assert_close(layers[-1], expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(ours.forward_features(x), expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(ours.proj_out(layers[-1]), theirs(x.flatten(2)),
                                   rtol=0, atol=1e-5)


def test_braindecode_hub_folder_loads(tmp_path):
    bp = _braindecode()
    theirs = bp.base_backbone().eval()
    if not hasattr(theirs, "save_pretrained"):
        pytest.skip("huggingface_hub is not installed; braindecode cannot write Hub folders")
    theirs.save_pretrained(tmp_path / "hub")
    ours = load_teacher(tmp_path / "hub")
    x = patchify(_x(C=19, N=2, B=1))
    with torch.no_grad():
        torch.testing.assert_close(ours.proj_out(ours.forward_features(x)), theirs(x.flatten(2)),
                                   rtol=0, atol=1e-5)
