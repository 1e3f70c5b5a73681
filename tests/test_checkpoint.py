"""load_pruned checks a pruned-model file against the architecture before building anything (issue 19,
item 6), and pruned files are written with the user's umask (item 3)."""

import os
import stat

import pytest
import torch

import apib
from apib.checkpoint import MAX_INPUT_ELEMENTS, load_pruned, save_pruned
from apib.models import get_model

KEPT = {"layer1.0.conv1": [0, 3, 5], "layer2.1.conv1": list(range(0, 32, 2))}


@pytest.fixture
def pruned_file(tmp_path):
    model = get_model("resnet20", 10)
    apib.apply_pruning(model, {"input_shape": [1, 3, 32, 32], "kept": KEPT})
    path = tmp_path / "pruned.pt"
    save_pruned(model, path, arch="resnet20", num_classes=10)
    return path, model


def _rewrite(path, edit):
    ckpt = torch.load(path, weights_only=True)
    edit(ckpt)
    torch.save(ckpt, path)


def test_a_valid_file_loads_as_saved(pruned_file):
    path, model = pruned_file
    loaded = load_pruned(path)
    assert loaded.get_submodule("layer1.0.conv1").out_channels == 3
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model.eval()(x), rtol=0, atol=0)
    # With the architecture given by the caller (a file without arch), on the caller's model.
    _rewrite(path, lambda c: c.update(arch=None))
    given = get_model("resnet20", 10)
    assert load_pruned(path, given) is given
    torch.testing.assert_close(given(x), model(x), rtol=0, atol=0)


def _kept(layer, channels):
    return lambda c: c["pruning"]["kept"].__setitem__(layer, channels)


@pytest.mark.parametrize(
    "edit, message",
    [
        (_kept("layer1.0.conv1", [0, 3, 16]), r"keeps channel 16, not an index in \[0, 16\)"),
        (_kept("layer1.0.conv1", [-1, 3, 5]), "keeps channel -1"),
        (_kept("layer1.0.conv1", [0, 3, 3]), "more than once"),
        (_kept("layer1.0.conv1", []), "keeps no channel"),
        (
            _kept("layer1.0.conv1", [0, 3, 5, 7]),
            r"keeps 4 channels but the state_dict has a weight of shape \(3,",
        ),
        (_kept("layer1.0.conv1", [0, "3", 5]), "keeps channel '3'"),
        (_kept("layer9.0.conv1", [0]), "names layer 'layer9.0.conv1'"),
        (_kept("conv1", list(range(16))), "'conv1', which is not prunable"),
        (lambda c: c["pruning"].pop("kept"), "'input_shape' and a 'kept' dict"),
        (lambda c: c.pop("pruning"), "lacks 'pruning'"),
        (lambda c: c.pop("state_dict"), "lacks 'state_dict'"),
        (lambda c: c["state_dict"].pop("fc.bias"), r"1 missing \(fc.bias\)"),
        (lambda c: c["state_dict"].__setitem__("fc.bias", [0.0] * 10), "must map names to tensors"),
        (lambda c: c["pruning"].__setitem__("input_shape", [1, 3, 100_000, 100_000]), "not an input shape"),
        (lambda c: c["pruning"].__setitem__("input_shape", [1, 3, 0, 32]), "not an input shape"),
        (lambda c: c["pruning"].__setitem__("input_shape", "1x3x32x32"), "not an input shape"),
        # Built as written, these would allocate 256 GB (num_classes) or crash on mismatched shapes.
        (
            lambda c: c.update(num_classes=10**9),
            r"fc.weight \(10, 64\) where the model has \(1000000000, 64\)",
        ),
        (
            lambda c: c.update(num_classes=100),
            r"mismatched \(fc.weight \(10, 64\) where the model has \(100, 64\)",
        ),
        (lambda c: c.update(num_classes="ten"), "num_classes must be an integer"),
        (lambda c: c.update(arch="resnet999"), "unknown model name 'resnet999'"),
        (lambda c: c.update(arch="resnet56"), "do not fit the model: .* missing"),
        (lambda c: c.update(format="other/1"), "not a pruned-model file"),
    ],
)
def test_a_damaged_or_mismatched_file_is_a_clear_error(pruned_file, edit, message):
    path, _ = pruned_file
    _rewrite(path, edit)
    with pytest.raises(ValueError, match=message) as err:
        load_pruned(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint\n", b"PK\x03\x04 torn zip"])
def test_a_file_that_is_not_a_checkpoint_is_a_clear_error(tmp_path, content):
    (tmp_path / "bad.pt").write_bytes(content)
    with pytest.raises(ValueError, match=r"bad.pt' is not a checkpoint that loads with torch.load"):
        load_pruned(tmp_path / "bad.pt")


def test_input_shape_limit_is_what_the_message_says(pruned_file):
    path, _ = pruned_file
    side = int((MAX_INPUT_ELEMENTS // 3) ** 0.5) + 1
    _rewrite(path, lambda c: c["pruning"].__setitem__("input_shape", [1, 3, side, side]))
    with pytest.raises(ValueError, match=f"at most {MAX_INPUT_ELEMENTS} elements"):
        load_pruned(path)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_saved_files_follow_the_umask(tmp_path, pruned_file, umask):
    _, model = pruned_file
    old = os.umask(umask)
    try:
        save_pruned(model, tmp_path / "again.pt", arch="resnet20", num_classes=10)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "again.pt").stat().st_mode) == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.pt", "pruned.pt"]
