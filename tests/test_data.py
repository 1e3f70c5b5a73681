import codecs
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from apib.data import (
    CIFAR_MEAN,
    CIFAR_STD,
    TensorImageDataset,
    cifar,
    dataset_names,
    digits,
    get_dataset,
    image_folder,
    input_shape,
    loader,
    num_classes,
)


def _write_cifar(root, num_classes, n_per_file=6):
    """A miniature release in the real layout; image i of each file is filled with the value 10·i."""
    rng = np.random.default_rng(0)
    if num_classes == 10:
        folder, train_files, test_files, key = (
            "cifar-10-batches-py",
            [f"data_batch_{i}" for i in range(1, 6)],
            ["test_batch"],
            b"labels",
        )
        meta, names_key = "batches.meta", b"label_names"
    else:
        folder, train_files, test_files, key = "cifar-100-python", ["train"], ["test"], b"fine_labels"
        meta, names_key = "meta", b"fine_label_names"
    (root / folder).mkdir(parents=True)
    for name in train_files + test_files:
        data = np.repeat(np.arange(n_per_file, dtype=np.uint8)[:, None] * 10, 3072, axis=1)
        labels = rng.integers(0, num_classes, n_per_file).tolist()
        with open(root / folder / name, "wb") as f:
            pickle.dump({b"data": data, key: labels, b"batch_label": name.encode()}, f)
    with open(root / folder / meta, "wb") as f:
        pickle.dump({names_key: [f"class{i}".encode() for i in range(num_classes)]}, f)
    return root / folder, len(train_files) * n_per_file, len(test_files) * n_per_file


@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("parent", [False, True], ids=["folder", "parent"])
def test_cifar_reads_pickles(tmp_path, num_classes, parent):
    folder, n_train, n_test = _write_cifar(tmp_path, num_classes)
    path = tmp_path if parent else folder
    test = cifar(path, train=False, num_classes=num_classes)
    train = cifar(path, train=True, num_classes=num_classes)
    assert (len(train), len(test)) == (n_train, n_test)
    assert test.classes == [f"class{i}" for i in range(num_classes)]
    assert 0 <= int(train.targets.min()) and int(train.targets.max()) < num_classes
    image, label = test[3]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and isinstance(label, int)
    # Test images are not augmented: pixel value 30 normalizes exactly.
    mean, std = torch.tensor(CIFAR_MEAN[num_classes]), torch.tensor(CIFAR_STD[num_classes])
    expected = ((30 / 255 - mean) / std).view(3, 1, 1).expand(3, 32, 32)
    torch.testing.assert_close(image, expected)
    assert train.augment and not test.augment


def test_cifar_augmentation_crops_and_flips():
    # A ramp along the width shows both the flip (reversed) and the crop offset (zero padding).
    ramp = torch.arange(1, 33, dtype=torch.uint8).repeat(1, 3, 32, 1)
    data = TensorImageDataset(
        ramp, torch.zeros(1, dtype=torch.int64), (0, 0, 0), (1 / 255,) * 3, augment=True
    )
    torch.manual_seed(0)
    flipped = shifted = False
    for _ in range(40):
        row = data[0][0][0, 16].round()  # back to the pixel values 0..32
        assert row.shape == (32,)
        nonzero = row[row > 0]
        flipped |= bool(nonzero[0] > nonzero[-1])
        shifted |= bool((row == 0).any())
        steps = (nonzero[1:] - nonzero[:-1]).abs()
        assert torch.all(steps == 1), "the crop must keep neighbouring pixels together"
    assert flipped and shifted


def test_cifar_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        cifar(tmp_path / "nowhere", train=True)
    folder, _, _ = _write_cifar(tmp_path, 10)
    (folder / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        cifar(tmp_path, train=True)
    assert len(cifar(tmp_path, train=False)) == 6  # the test split does not need it
    with pytest.raises(FileNotFoundError, match="'train'"):
        cifar(tmp_path, train=True, num_classes=100)
    with pytest.raises(ValueError, match="num_classes"):
        cifar(tmp_path, train=True, num_classes=20)


def _write_image_folder(root, classes=("cat", "dog"), per_class=2):
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.full((40, 50, 3), 60 * c + 10 * i, dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")


@pytest.mark.parametrize("layout", ["splits", "flat"])
def test_image_folder(tmp_path, layout):
    if layout == "splits":
        _write_image_folder(tmp_path / "train")
        _write_image_folder(tmp_path / "val", per_class=1)
    else:
        _write_image_folder(tmp_path)
    train = image_folder(tmp_path, train=True, image_size=24)
    val = image_folder(tmp_path, train=False, image_size=24)
    assert train.classes == val.classes == ["cat", "dog"]
    assert (len(train), len(val)) == ((4, 2) if layout == "splits" else (4, 4))
    for data in (train, val):
        image, label = data[len(data) - 1]
        assert image.shape == (3, 24, 24) and image.dtype == torch.float32 and label == 1


def test_image_folder_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent"):
        image_folder(tmp_path / "absent", train=True)
    _write_image_folder(tmp_path / "train")
    with pytest.raises(FileNotFoundError, match="'val'"):
        image_folder(tmp_path, train=False)


def test_digits_split():
    pytest.importorskip("sklearn", reason="the digits dataset is scikit-learn's")
    train, test = digits(train=True), digits(train=False)
    assert (len(train), len(test)) == (1437, 360)
    # Stratified: every class is in both splits in about the same proportion.
    assert torch.bincount(test.targets).tolist() == pytest.approx([36] * 10, abs=1)
    assert torch.bincount(train.targets, minlength=10).min() >= 139
    batch = torch.stack([train[i][0] for i in range(len(train))])
    assert batch.shape == (1437, 3, 32, 32)
    assert abs(batch.mean().item()) < 1e-4 and batch.std().item() == pytest.approx(1, abs=1e-3)
    assert torch.equal(batch[:, 0], batch[:, 2])  # grey images in three channels


def test_digits_deterministic_and_seeded():
    pytest.importorskip("sklearn", reason="the digits dataset is scikit-learn's")
    a, b = digits(train=False, image_size=16), digits(train=False, image_size=16)
    assert a[0][0].shape == (3, 16, 16)
    assert torch.equal(a.images, b.images) and torch.equal(a.targets, b.targets)
    c = digits(train=False, image_size=16, seed=1)
    assert not torch.equal(a.images, c.images)
    with pytest.raises(ValueError, match="image_size"):
        digits(train=True, image_size=0)


def test_get_dataset_and_metadata(tmp_path):
    pytest.importorskip("sklearn", reason="the digits dataset is scikit-learn's")
    assert dataset_names() == ["digits", "cifar10", "cifar100", "imagenet"]
    assert [num_classes(n) for n in dataset_names()] == [10, 10, 100, 1000]
    assert input_shape("cifar100") == (3, 32, 32) and input_shape("imagenet") == (3, 224, 224)
    assert input_shape("digits", image_size=16) == (3, 16, 16)
    assert len(get_dataset("digits", train=False, image_size=16)) == 360
    _write_cifar(tmp_path, 10)
    assert len(get_dataset("cifar10", tmp_path, train=False)) == 6
    with pytest.raises(ValueError, match="image_size must be 32"):
        input_shape("cifar10", image_size=64)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "imagenet"])
def test_get_dataset_needs_path(name):
    with pytest.raises(ValueError, match="--data-path"):
        get_dataset(name)


def test_get_dataset_errors(tmp_path):
    with pytest.raises(ValueError, match="mnist.*valid names: digits, cifar10"):
        get_dataset("mnist")
    with pytest.raises(ValueError, match="mnist"):
        num_classes("mnist")
    with pytest.raises(ValueError, match="takes no path"):
        get_dataset("digits", tmp_path)


def test_loader():
    data = digits(train=False, image_size=8)
    first = [labels for _, labels in loader(data, 100, train=True, seed=3)]
    again = [labels for _, labels in loader(data, 100, train=True, seed=3)]
    assert [len(b) for b in first] == [100, 100, 100, 60]
    assert all(torch.equal(x, y) for x, y in zip(first, again, strict=True))
    ordered = torch.cat([labels for _, labels in loader(data, 100, train=False)])
    assert torch.equal(ordered, data.targets)
    with pytest.raises(ValueError, match="batch_size"):
        loader(data, 0, train=True)
    with pytest.raises(ValueError, match="num_workers"):
        loader(data, 8, train=True, num_workers=-1)


# --- Reading CIFAR safely (issue 19, items 1 and 5) --------------------------------------------------


def _cifar10_test_file(tmp_path, batch, name="test_batch", protocol=pickle.DEFAULT_PROTOCOL):
    """A CIFAR-10 folder whose `name` file pickles `batch` (the other files are valid)."""
    folder, _, _ = _write_cifar(tmp_path, 10)
    with open(folder / name, "wb") as f:
        pickle.dump(batch, f, protocol=protocol)
    return folder


def _valid_batch(n=4):
    return {b"data": np.zeros((n, 3072), np.uint8), b"labels": list(range(n)), b"batch_label": b"x"}


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_cifar_reads_every_pickle_protocol(tmp_path, protocol):
    # The release is Python 2's protocol 2; files rewritten by Python 3 use _codecs (protocol 2) or
    # numpy's buffer reconstruction (protocol 5).
    batch = _valid_batch()
    batch[b"labels"] = np.array([3, 1, 4, 1], dtype=np.int64)
    folder = _cifar10_test_file(tmp_path, batch, protocol=protocol)
    data = cifar(folder, train=False)
    assert data.targets.tolist() == [3, 1, 4, 1] and data.images.shape == (4, 3, 32, 32)


class _Payload:
    """Unpickled by plain pickle.load, it runs `fn(*args)`."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _hostile(kind, marker):
    touch = _Payload(os.system, f"touch {marker}")
    if kind == "whole file":
        return touch
    if kind == "inside a valid batch":  # the payload's result is discarded: nothing would show
        return {**_valid_batch(), b"filenames": [touch]}
    if kind == "in an object array":  # numpy's reconstruction must not open a way round the rule
        return {**_valid_batch(), b"filenames": np.array([touch, 1], dtype=object)}
    return _Payload(exec, f"open({str(marker)!r}, 'w').close()")


@pytest.mark.parametrize("name", ["test_batch", "batches.meta"])
@pytest.mark.parametrize("kind", ["whole file", "inside a valid batch", "in an object array", "exec"])
def test_cifar_hostile_pickle_runs_nothing(tmp_path, kind, name):
    marker = tmp_path / "marker"
    folder = _cifar10_test_file(tmp_path, _hostile(kind, marker), name=name)
    with pytest.raises(ValueError, match=rf"{name}' is not a CIFAR python-pickle file: it names \S+, which"):
        cifar(folder, train=False)
    assert not marker.exists()


def test_cifar_codecs_is_admitted_for_latin1_only(tmp_path):
    folder = _cifar10_test_file(
        tmp_path, {**_valid_batch(), b"filenames": _Payload(codecs.encode, "x", "rot13")}
    )
    with pytest.raises(ValueError, match="test_batch' is not a CIFAR python-pickle file: .*'rot13'"):
        cifar(folder, train=False)


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda b: pickle.dumps(b)[:-40], "not a CIFAR python-pickle file: pickle data was truncated"),
        (lambda b: b"\x00\x01garbage", "not a CIFAR python-pickle file"),
        (lambda b: b"", "not a CIFAR python-pickle file"),
        (lambda b: pickle.dumps([b]), "it holds a list"),
        (lambda b: pickle.dumps({b"data": b[b"data"]}), "no 'labels' entry"),
        (lambda b: pickle.dumps({b"labels": b[b"labels"]}), "no 'data' entry"),
        (
            lambda b: pickle.dumps({**b, b"data": np.zeros((4, 3000), np.uint8)}),
            r"uint8 array, got .*\(4, 3000\)",
        ),
        (lambda b: pickle.dumps({**b, b"data": np.zeros((4, 3072), np.float32)}), "got a float32 array"),
        (lambda b: pickle.dumps({**b, b"data": [[0] * 3072] * 4}), "got a list"),
        (lambda b: pickle.dumps({**b, b"labels": [0, 1, 2]}), "list of 4 labels .* got a list of length 3"),
        (
            lambda b: pickle.dumps({**b, b"labels": [0, 1, 2, 10]}),
            r"label 10 is not a class index in \[0, 10\)",
        ),
        (lambda b: pickle.dumps({**b, b"labels": [0, -1, 2, 3]}), "label -1"),
        (lambda b: pickle.dumps({**b, b"labels": [0, 1.5, 2, 3]}), "label 1.5"),
    ],
)
def test_cifar_corrupted_batch_is_a_clear_error(tmp_path, corrupt, message):
    folder, _, _ = _write_cifar(tmp_path, 10)
    (folder / "test_batch").write_bytes(corrupt(_valid_batch()))
    with pytest.raises(ValueError, match=f"test_batch'?:? .*{message}"):
        cifar(folder, train=False)


def test_cifar_corrupted_meta_is_a_clear_error(tmp_path):
    folder, _, _ = _write_cifar(tmp_path, 10)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [b"cat", b"dog"]}, f)
    with pytest.raises(ValueError, match="batches.meta'.*10 class names, got a list of length 2"):
        cifar(folder, train=False)


# --- Image folders: one class index for both splits (issue 19, item 4) -------------------------------


def test_image_folder_class_index_comes_from_train(tmp_path):
    _write_image_folder(tmp_path / "train", classes=("cat", "dog", "emu"))
    _write_image_folder(tmp_path / "val", classes=("dog", "emu"))  # no cat: indices must not shift
    train, val = image_folder(tmp_path, True, image_size=8), image_folder(tmp_path, False, image_size=8)
    assert train.classes == val.classes == ["cat", "dog", "emu"]
    assert val.targets == [1, 1, 2, 2]
    assert [val[i][1] for i in range(len(val))] == [1, 1, 2, 2]


def test_image_folder_val_class_missing_from_train_is_an_error(tmp_path):
    _write_image_folder(tmp_path / "train", classes=("cat", "dog"))
    _write_image_folder(tmp_path / "val", classes=("cat", "dog", "fox"))
    assert len(image_folder(tmp_path, train=True)) == 4
    with pytest.raises(ValueError, match="'fox'.*lacks"):
        image_folder(tmp_path, train=False)


def test_image_folder_val_needs_train(tmp_path):
    _write_image_folder(tmp_path / "val")
    with pytest.raises(FileNotFoundError, match="no 'train' subfolder.*class index"):
        image_folder(tmp_path, train=False)


def test_unreadable_image_names_its_file(tmp_path):
    _write_image_folder(tmp_path)
    (tmp_path / "dog" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    data = image_folder(tmp_path, train=False, image_size=8)
    assert data[0][0].shape == (3, 8, 8)
    with pytest.raises(ValueError, match=r"unreadable image .*dog/1\.png"):
        data[3]
