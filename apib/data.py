"""Datasets for training, calibration and evaluation, read from local files only: nothing is downloaded.

- ``digits``: scikit-learn's bundled 8×8 handwritten digits (1797 images, 10 classes), upscaled; the
  embedded default, so the demo runs anywhere.
- ``cifar10`` / ``cifar100``: the python-pickle release (``cifar-10-python.tar.gz`` extracted).
- ``imagenet``: any ImageNet-style tree of class folders.

Every dataset yields ``(image (3, H, W) float32, normalized; label int)``. Training splits of CIFAR and
image folders are augmented (random crop + horizontal flip) unless ``augment=False`` is asked for, as a
calibration batch drawn from the training images should be.

No loader here can execute code from a data folder: CIFAR's pickles are read by an unpickler that
admits only what the format holds (containers, bytes, strings, numbers, numpy arrays and dtypes), and
images are decoded by Pillow. A file that is not what its format promises raises ``ValueError`` naming it.
"""

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from apib_kernels.validation import check_int, is_int

try:
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # numpy < 2
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric

__all__ = [
    "TensorImageDataset",
    "cifar",
    "image_folder",
    "digits",
    "get_dataset",
    "dataset_names",
    "num_classes",
    "input_shape",
    "loader",
]

# CIFAR-10 std is the widely copied (0.2023, 0.1994, 0.2010) of kuangliu/HRank/CHIP rather than the exact
# per-pixel value, so checkpoints trained by that code evaluate correctly here.
CIFAR_MEAN = {10: (0.4914, 0.4822, 0.4465), 100: (0.5071, 0.4865, 0.4409)}
CIFAR_STD = {10: (0.2023, 0.1994, 0.2010), 100: (0.2673, 0.2564, 0.2762)}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TensorImageDataset(Dataset):
    """Images held in memory as uint8: item ``i`` is ``(image (3, H, W) float32, label int)``.

    ``images``: ``(N, C, H, W)`` uint8 with ``C`` 3, or 1 (repeated to 3 channels on access);
    ``targets``: ``(N,)`` int64; ``mean``/``std``: per-channel, for pixel values scaled to [0, 1].
    ``augment`` pads by 4 zero pixels, crops back to ``H × W`` at a random offset and flips
    horizontally with probability 1/2, drawing from torch's global RNG (which ``DataLoader`` seeds per
    worker).
    """

    def __init__(
        self,
        images: Tensor,
        targets: Tensor,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        *,
        augment: bool = False,
        classes: list[str] | None = None,
    ):
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(
                f"images must be (N, 1 or 3, H, W) uint8, got {tuple(images.shape)} {images.dtype}"
            )
        if targets.shape != (images.shape[0],):
            raise ValueError(f"targets must have shape ({images.shape[0]},), got {tuple(targets.shape)}")
        self.images = images
        self.targets = targets.long()
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.augment = augment
        n_classes = int(self.targets.max()) + 1 if len(self.targets) else 0
        self.classes = classes if classes is not None else [str(i) for i in range(n_classes)]

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        x = self.images[index]
        if self.augment:
            x = _random_crop_flip(x, pad=4)
        x = x.expand(3, -1, -1).float().div(255)
        return (x - self.mean) / self.std, int(self.targets[index])


def _random_crop_flip(x: Tensor, pad: int) -> Tensor:
    """``(C, H, W) → (C, H, W)``: zero-pad by ``pad``, crop at a random offset, flip with p = 1/2."""
    h, w = x.shape[-2:]
    i, j = torch.randint(0, 2 * pad + 1, (2,)).tolist()
    x = F.pad(x, (pad, pad, pad, pad))[:, i : i + h, j : j + w]
    return x.flip(-1) if torch.rand(()) < 0.5 else x


@dataclass(frozen=True)
class _CifarLayout:
    folder: str  # the folder the release's archive extracts to
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: bytes
    meta_file: str
    names_key: bytes


_CIFAR = {
    10: _CifarLayout(
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        b"labels",
        "batches.meta",
        b"label_names",
    ),
    100: _CifarLayout("cifar-100-python", ("train",), ("test",), b"fine_labels", "meta", b"fine_label_names"),
}


def _latin1(text: str, encoding: str) -> bytes:
    """``_codecs.encode`` as protocol-2 pickles written by Python 3 use it for bytes, latin-1 only."""
    if encoding != "latin1":
        raise pickle.UnpicklingError(f"refused _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


# Everything a CIFAR pickle may name, from Python 2's numpy (numpy.core) to numpy 2 (numpy._core):
# array and scalar reconstruction, which builds data from a dtype and bytes and calls nothing else.
_NUMPY_RECONSTRUCTION = {
    ("multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("multiarray", "scalar"): _multiarray.scalar,
    ("numeric", "_frombuffer"): _numeric._frombuffer,
}
_PICKLE_GLOBALS = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1,
    **{
        (f"{core}.{module}", name): fn
        for core in ("numpy.core", "numpy._core")
        for (module, name), fn in _NUMPY_RECONSTRUCTION.items()
    },
}


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR file never holds")
        return _PICKLE_GLOBALS[module, name]


def _unpickle(path: Path) -> dict:
    """The dict pickled in CIFAR file ``path``, read without running any code the file names."""
    with open(path, "rb") as f:
        try:
            obj = _CifarUnpickler(f, encoding="bytes").load()
        except Exception as err:  # anything the bytes of a corrupted or hostile file can provoke
            raise ValueError(f"{str(path)!r} is not a CIFAR python-pickle file: {err}") from err
    if not isinstance(obj, dict):
        raise ValueError(f"{str(path)!r} is not a CIFAR python-pickle file: it holds a {type(obj).__name__}")
    return obj


def _entry(batch: dict, key: bytes, path: Path):
    if key not in batch:
        raise ValueError(f"{str(path)!r} has no {key.decode()!r} entry: not a CIFAR batch or meta file")
    return batch[key]


def _cifar_batch(path: Path, label_key: bytes, num_classes: int) -> tuple[np.ndarray, list[int]]:
    """Images ``(N, 3, 32, 32)`` uint8 and labels of CIFAR batch file ``path``, checked."""
    batch = _unpickle(path)
    images, labels = _entry(batch, b"data", path), _entry(batch, label_key, path)
    if not (
        isinstance(images, np.ndarray)
        and images.dtype == np.uint8
        and images.ndim == 2
        and images.shape[1] == 3 * 32 * 32
    ):
        raise ValueError(f"{str(path)!r}: data must be an (N, 3072) uint8 array, got {_describe(images)}")
    labels = labels.tolist() if isinstance(labels, np.ndarray) else labels
    if not isinstance(labels, list) or len(labels) != len(images):
        raise ValueError(
            f"{str(path)!r}: {label_key.decode()} must be a list of {len(images)} labels (one per image), "
            f"got {_describe(labels)}"
        )
    bad = next((y for y in labels if not (is_int(y) and 0 <= y < num_classes)), None)
    if bad is not None:
        raise ValueError(f"{str(path)!r}: label {bad!r} is not a class index in [0, {num_classes})")
    return images.reshape(-1, 3, 32, 32), labels


def _describe(obj) -> str:
    if isinstance(obj, np.ndarray):
        return f"a {obj.dtype} array of shape {obj.shape}"
    return f"a {type(obj).__name__}" + (f" of length {len(obj)}" if isinstance(obj, (list, tuple)) else "")


def cifar(
    path: str | Path, train: bool, num_classes: int = 10, augment: bool | None = None
) -> TensorImageDataset:
    """CIFAR-10 or CIFAR-100 from the python-pickle release in ``path``: items ``((3, 32, 32), label)``.

    ``path`` is the extracted folder (``cifar-10-batches-py`` / ``cifar-100-python``) or its parent.
    ``augment`` defaults to ``train``.
    """
    if num_classes not in _CIFAR:
        raise ValueError(f"num_classes must be 10 or 100 for CIFAR, got {num_classes!r}")
    layout = _CIFAR[num_classes]
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"CIFAR-{num_classes} data path {str(root)!r} is not a folder")
    if (root / layout.folder).is_dir():
        root = root / layout.folder
    files = layout.train_files if train else layout.test_files
    for name in files:
        if not (root / name).is_file():
            raise FileNotFoundError(
                f"CIFAR-{num_classes} data path {str(root)!r} has no file {name!r} "
                f"(expected the python-pickle release, extracted: {layout.folder}/{name})"
            )
    data, labels = [], []
    for name in files:
        images, y = _cifar_batch(root / name, layout.label_key, num_classes)
        data.append(images)
        labels.extend(y)
    classes = None
    if (root / layout.meta_file).is_file():
        meta = root / layout.meta_file
        names = _entry(_unpickle(meta), layout.names_key, meta)
        if not (
            isinstance(names, list)
            and len(names) == num_classes
            and all(isinstance(n, (bytes, str)) for n in names)
        ):
            raise ValueError(
                f"{str(meta)!r}: {layout.names_key.decode()} must be a list of {num_classes} class names, "
                f"got {_describe(names)}"
            )
        classes = [n.decode(errors="replace") if isinstance(n, bytes) else n for n in names]
    return TensorImageDataset(
        torch.from_numpy(np.concatenate(data)),
        torch.tensor(labels, dtype=torch.int64),
        CIFAR_MEAN[num_classes],
        CIFAR_STD[num_classes],
        augment=train if augment is None else augment,
        classes=classes,
    )


class _ImageFiles(Dataset):
    """Image files with class indices: item ``i`` is ``(transform(RGB image), label)``."""

    def __init__(self, samples: list[tuple[str, int]], classes: list[str], transform):
        self.samples = samples
        self.targets = [label for _, label in samples]
        self.classes = classes
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path, label = self.samples[index]
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
        except Exception as err:  # Pillow raises many types for damaged files
            raise ValueError(f"unreadable image {path!r}: {err}") from err
        return self.transform(rgb), label


def image_folder(
    path: str | Path, train: bool, image_size: int = 224, augment: bool | None = None
) -> Dataset:
    """ImageNet-style class folders: items ``((3, image_size, image_size), label)``.

    Reads ``path/train/<class>/*`` or ``path/val/<class>/*`` by ``train``; a ``path`` with neither
    subfolder is itself the root of class folders. The class index is always that of ``train/``'s
    folders (sorted by name), so both splits label alike; a class in ``val/`` that ``train/`` lacks is a
    ``ValueError``, and ``val/`` needs its ``train/`` beside it. Augmented (``augment`` defaults to
    ``train``): RandomResizedCrop + horizontal flip; otherwise: resize the short side to
    ``256/224 · image_size`` and center-crop. An image that cannot be decoded raises ``ValueError``
    naming the file when it is read.
    """
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
    from torchvision.transforms import v2

    image_size = check_int(image_size, "image_size", 1)
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder data path {str(root)!r} is not a folder")
    index_root = root
    if (root / "train").is_dir() or (root / "val").is_dir():
        index_root, root = root / "train", root / ("train" if train else "val")
        for folder in (index_root, root):
            if not folder.is_dir():
                raise FileNotFoundError(
                    f"image folder data path {str(path)!r} has no {folder.name!r} subfolder"
                    + ("" if train else " (its class folders give the class index)")
                )
    classes, class_to_idx = find_classes(index_root)
    unknown = sorted(set(find_classes(root)[0]) - set(classes))
    if unknown:
        raise ValueError(
            f"{str(root)!r} has class folder(s) {', '.join(map(repr, unknown[:5]))} that "
            f"{str(index_root)!r} lacks: the classes of val/ must be among those of train/"
        )
    samples = make_dataset(root, class_to_idx, IMG_EXTENSIONS, allow_empty=not train)
    if train if augment is None else augment:
        geometry = [v2.RandomResizedCrop(image_size), v2.RandomHorizontalFlip()]
    else:
        geometry = [v2.Resize(round(image_size * 256 / 224)), v2.CenterCrop(image_size)]
    transform = v2.Compose(
        [
            v2.ToImage(),
            *geometry,
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    return _ImageFiles(samples, classes, transform)


def digits(
    train: bool, image_size: int = 32, seed: int = 0, test_fraction: float = 0.2
) -> TensorImageDataset:
    """scikit-learn's digits upscaled bilinearly: items ``((3, image_size, image_size), label)``.

    A stratified split by ``seed`` (1437 train / 360 test images at the default ``test_fraction``); both
    splits are normalized with the training split's mean and std. Not augmented.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    image_size = check_int(image_size, "image_size", 1)
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    bunch = load_digits()
    index_train, index_test = train_test_split(
        np.arange(len(bunch.target)), test_size=test_fraction, stratify=bunch.target, random_state=seed
    )
    # Pixel values are 0..16; upscale in float, then store as uint8 like every other image source.
    images = torch.from_numpy(bunch.images).float().div(16).unsqueeze(1)
    images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = images.mul(255).round().clamp(0, 255).to(torch.uint8)
    pixels = images[torch.from_numpy(index_train)].float().div(255)
    mean, std = (pixels.mean().item(),) * 3, (pixels.std().item(),) * 3
    index = torch.from_numpy(index_train if train else index_test)
    targets = torch.from_numpy(bunch.target)[index]
    return TensorImageDataset(images[index], targets, mean, std, classes=[str(i) for i in range(10)])


@dataclass(frozen=True)
class _Spec:
    num_classes: int
    image_size: int
    needs_path: bool


_DATASETS = {
    "digits": _Spec(10, 32, needs_path=False),
    "cifar10": _Spec(10, 32, needs_path=True),
    "cifar100": _Spec(100, 32, needs_path=True),
    "imagenet": _Spec(1000, 224, needs_path=True),
}


def _spec(name: str) -> _Spec:
    if name not in _DATASETS:
        raise ValueError(f"unknown dataset name {name!r}; valid names: {', '.join(_DATASETS)}")
    return _DATASETS[name]


def dataset_names() -> list[str]:
    """The names ``get_dataset`` accepts."""
    return list(_DATASETS)


def num_classes(name: str) -> int:
    """Number of classes of dataset ``name`` (``imagenet``: 1000; a smaller tree: ``len(ds.classes)``)."""
    return _spec(name).num_classes


def input_shape(name: str, image_size: int | None = None) -> tuple[int, int, int]:
    """``(3, H, W)`` of one image of dataset ``name``, at its default size or ``image_size``."""
    spec = _spec(name)
    if image_size is None:
        image_size = spec.image_size
    image_size = check_int(image_size, "image_size", 1)
    if name.startswith("cifar") and image_size != 32:
        raise ValueError(f"image_size must be 32 for {name}, got {image_size}")
    return (3, image_size, image_size)


def get_dataset(
    name: str, path: str | Path | None = None, train: bool = True, augment: bool | None = None, **kwargs
) -> Dataset:
    """Dataset ``name`` (see ``dataset_names()``), training or test split; ``kwargs`` go to its loader.

    ``digits`` is embedded and takes no ``path``; the others read ``path`` (the ``--data-path`` option).
    ``augment`` (default: ``train``) applies to the image datasets; digits are never augmented, since
    flips and shifted crops change what an 8×8 digit shows.
    """
    spec = _spec(name)
    if spec.needs_path and path is None:
        raise ValueError(f"dataset {name!r} is read from local files: a path (--data-path) is required")
    if not spec.needs_path and path is not None:
        raise ValueError(f"dataset {name!r} is embedded and takes no path (--data-path), got {str(path)!r}")
    if name == "digits":
        return digits(train, **kwargs)
    if name == "imagenet":
        return image_folder(path, train, augment=augment, **kwargs)
    return cifar(path, train, num_classes=spec.num_classes, augment=augment, **kwargs)


def loader(dataset: Dataset, batch_size: int, train: bool, num_workers: int = 0, seed: int = 0) -> DataLoader:
    """Batches of ``dataset``: shuffled when ``train``, in an order (and worker RNG) fixed by ``seed``."""
    batch_size = check_int(batch_size, "batch_size", 1)
    num_workers = check_int(num_workers, "num_workers", 0)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
    )
