"""The dataset registry: one :class:`DatasetSpec` per name in :data:`DATASETS`.

A spec says what the dataset is (task, classes, shape), where its files come from (``kind``:
``"files"`` found on disk, ``"bundled"`` with scikit-learn, ``"generated"`` locally, or ``"path"``
given by the user), which options its reader takes (validated before any file is read), and how to
get it (a Debian package, the official downloads).
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixlab.data import cifar, idx, imagefolder, mnist1d, synthetic, tabular
from mixlab.data.rotation import (
    check_fraction_closed,
    check_max_degrees,
    check_optional_count,
    load_rotated_fashion_mnist,
)
from mixlab.errors import MixlabTypeError, MixlabValueError, UnknownNameError, check_choice, check_int

KINDS = ("files", "bundled", "generated", "path")
REQUIRED = object()  # the default of an option the caller must give


@dataclass(frozen=True)
class Option:
    """One reader option: its default (or :data:`REQUIRED`), a checker returning the normalised value, a help line."""

    name: str
    default: Any
    check: Callable[[str, Any], Any]
    help: str = ""


@dataclass(frozen=True)
class Download:
    """One file of a dataset's official distribution: name, URLs tried in order, MD5 and size when known."""

    filename: str
    urls: tuple[str, ...]
    md5: str | None = None
    size: int | None = None
    extract: bool = False  # a tar archive to unpack into the dataset folder


@dataclass(frozen=True)
class DatasetSpec:
    """What mixlab knows about one dataset.

    Example:
        >>> spec = DATASETS["fashion_mnist"]
        >>> spec.task, spec.num_classes, spec.input_shape, spec.aliases[0]
        ('classification', 10, (1, 28, 28), 'fashion-mnist')
    """

    name: str
    description: str
    task: str  # "classification", "regression", or "auto" (decided from the data: csv)
    kind: str
    loader: Callable[..., Any]
    num_classes: int | None = None
    input_shape: tuple[int, ...] | None = None
    class_names: tuple[str, ...] | None = None
    aliases: tuple[str, ...] = ()
    needs: str = ""  # the files a folder must hold, for messages
    has_files: Callable[[Path], bool] | None = None
    apt_package: str | None = None
    downloads: tuple[Download, ...] = ()
    homepage: str = ""
    citation: str = ""
    options: tuple[Option, ...] = field(default=())
    cached: bool = False  # a generated dataset written to a cache on first load (MNIST-1D); others live in memory

    def resolve_options(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Check ``given`` against this dataset's options; return every option with defaults filled in.

        Unknown names raise :class:`UnknownNameError` listing the accepted ones; bad values raise
        naming the option, the value and what is accepted; missing required options raise.

        Example:
            >>> DATASETS["digits"].resolve_options({"test_fraction": 0.25})
            {'test_fraction': 0.25, 'split_seed': 0}
        """
        known = {o.name: o for o in self.options}
        for name in given:
            if name not in known:
                raise UnknownNameError(f"option for dataset {self.name!r}", name, known or ["(none)"])
        out = {}
        for option in self.options:
            if option.name in given:
                out[option.name] = option.check(option.name, given[option.name])
            elif option.default is REQUIRED:
                raise MixlabValueError(f"dataset {self.name!r} needs option {option.name!r}: {option.help}")
            else:
                out[option.name] = option.default
        return out


# ---- option checkers: (name, value) -> normalised value ----


def _fraction(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise MixlabTypeError(f"{name} must be a number in (0, 1); got {value!r}")
    if not 0.0 < float(value) < 1.0:
        raise MixlabValueError(f"{name} must be in (0, 1); got {value!r}")
    return float(value)


def _optional_fraction(name: str, value: Any) -> float | None:
    return None if value is None else _fraction(name, value)


def _seed(name: str, value: Any) -> int:
    return check_int(name, value, minimum=0)


def _positive_int(name: str, value: Any) -> int:
    return check_int(name, value, minimum=1)


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise MixlabTypeError(f"{name} must be True or False; got {value!r}")
    return value


def _path(name: str, value: Any) -> str:
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise MixlabTypeError(f"{name} must be a path (str or os.PathLike); got {value!r}")
    return os.fspath(value)


def _optional_path(name: str, value: Any) -> str | None:
    return None if value is None else _path(name, value)


def _in_memory(name: str, value: Any) -> bool | str:
    if value == "auto" or isinstance(value, bool):
        return value
    raise MixlabValueError(f"{name} must be 'auto', True or False; got {value!r}")


def _columns(name: str, value: Any) -> str | list[str]:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) and v for v in value):
        return list(value)
    raise MixlabTypeError(f"{name} must be a column name or a non-empty list of column names; got {value!r}")


def _optional_columns(name: str, value: Any) -> list[str] | None:
    if value is None:
        return None
    cols = _columns(name, value)
    return [cols] if isinstance(cols, str) else cols


def _choice(*choices: str) -> Callable[[str, Any], str]:
    def check(name: str, value: Any) -> str:
        return check_choice(name, value, choices)

    return check


def _delimiter(name: str, value: Any) -> str:
    if not isinstance(value, str) or len(value) != 1:
        raise MixlabValueError(f"{name} must be one character; got {value!r}")
    return value


_TEST_FRACTION = Option("test_fraction", 0.2, _fraction, "fraction of the rows held out as the test split")
_SPLIT_SEED = Option("split_seed", 0, _seed, "seed of the train/test split (fixed so the test set never moves)")

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_IDX_NEEDS = (
    "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
    "t10k-labels-idx1-ubyte (each plain or .gz)"
)


def _idx_downloads(bases: tuple[str, ...], md5s: dict[str, str]) -> tuple[Download, ...]:
    return tuple(Download(name, tuple(b + name for b in bases), md5) for name, md5 in md5s.items())


DATASETS: dict[str, DatasetSpec] = {}


def _register(spec: DatasetSpec) -> None:
    DATASETS[spec.name] = spec


_register(
    DatasetSpec(
        name="fashion_mnist",
        description="Fashion-MNIST: 70,000 28x28 grayscale images of clothing, 10 classes (60,000 train / 10,000 test)",
        task="classification",
        kind="files",
        loader=idx.load_idx_dataset,
        num_classes=10,
        input_shape=(1, 28, 28),
        class_names=FASHION_MNIST_CLASSES,
        aliases=("fashion-mnist", "fashionmnist", "FashionMNIST/raw"),
        needs=_IDX_NEEDS,
        has_files=idx.has_idx_files,
        apt_package="dataset-fashion-mnist",
        downloads=_idx_downloads(
            (
                "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
                "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            ),
            {
                "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
                "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
                "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
            },
        ),
        homepage="https://github.com/zalandoresearch/fashion-mnist",
        citation="Xiao, Rasul & Vollgraf, Fashion-MNIST, arXiv:1708.07747, 2017",
    )
)

_register(
    DatasetSpec(
        name="mnist",
        description="MNIST: 70,000 28x28 grayscale handwritten digits, 10 classes (60,000 train / 10,000 test)",
        task="classification",
        kind="files",
        loader=idx.load_idx_dataset,
        num_classes=10,
        input_shape=(1, 28, 28),
        class_names=tuple(str(i) for i in range(10)),
        aliases=("MNIST", "MNIST/raw"),
        needs=_IDX_NEEDS,
        has_files=idx.has_idx_files,
        # The official site first; PyTorch's mirror serves the same bytes (the MD5 check makes sure).
        downloads=_idx_downloads(
            ("https://yann.lecun.com/exdb/mnist/", "https://ossci-datasets.s3.amazonaws.com/mnist/"),
            {
                "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
                "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
                "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
            },
        ),
        homepage="http://yann.lecun.com/exdb/mnist/",
        citation="LeCun, Bottou, Bengio & Haffner, Proc. IEEE 86(11), 1998",
    )
)

_register(
    DatasetSpec(
        name="cifar10",
        description="CIFAR-10: 60,000 32x32 colour images, 10 classes (50,000 train / 10,000 test), python pickles",
        task="classification",
        kind="files",
        loader=cifar.load_cifar10,
        num_classes=10,
        input_shape=(3, 32, 32),
        class_names=cifar.CIFAR10_CLASSES,
        aliases=(cifar.CIFAR10_DIR, "cifar-10", "CIFAR10"),
        needs="data_batch_1..data_batch_5 and test_batch (directly or in a cifar-10-batches-py/ folder)",
        has_files=cifar.has_cifar10_files,
        downloads=(
            Download(
                "cifar-10-python.tar.gz",
                ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
                "c58f30108f718f92721af3b95e74349a",
                170498071,
                extract=True,
            ),
        ),
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
        citation="Krizhevsky, Learning Multiple Layers of Features from Tiny Images, tech. report, 2009",
    )
)

_register(
    DatasetSpec(
        name="cifar100",
        description="CIFAR-100: 60,000 32x32 colour images, 100 fine (or 20 coarse) classes, python pickles",
        task="classification",
        kind="files",
        loader=cifar.load_cifar100,
        num_classes=100,
        input_shape=(3, 32, 32),
        aliases=(cifar.CIFAR100_DIR, "cifar-100", "CIFAR100"),
        needs="train, test and meta (directly or in a cifar-100-python/ folder)",
        has_files=cifar.has_cifar100_files,
        downloads=(
            Download(
                "cifar-100-python.tar.gz",
                ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",),
                "eb9058c3a382ffc7106e4002c42a8d85",
                extract=True,
            ),
        ),
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
        citation="Krizhevsky, Learning Multiple Layers of Features from Tiny Images, tech. report, 2009",
        options=(Option("labels", "fine", _choice("fine", "coarse"), "'fine' (100 classes) or 'coarse' (20)"),),
    )
)

_register(
    DatasetSpec(
        name="imagefolder",
        description="Your image folder: path/train/<class>/*.png and path/test/<class>/ (or val/), or one path/<class>/ tree",
        task="classification",
        kind="path",
        loader=imagefolder.load_imagefolder,
        options=(
            Option("path", REQUIRED, _path, "the folder holding train/ and test/ (or val/), or the class folders"),
            Option("image_size", 32, _positive_int, "side length every image is resized to"),
            Option("grayscale", False, _bool, "decode to 1 channel instead of RGB"),
            Option("in_memory", "auto", _in_memory, "decode all images up front ('auto': when they fit in 512 MB)"),
            Option("test_fraction", 0.2, _fraction, "share of each class held out as test when there is no train/"),
            _SPLIT_SEED,
        ),
    )
)

_register(
    DatasetSpec(
        name="mnist1d",
        description="MNIST-1D: 1-D signals of length 40, 10 classes, generated locally (80% train / 20% test)",
        task="classification",
        kind="generated",
        loader=mnist1d.load_mnist1d,
        cached=True,
        num_classes=10,
        input_shape=(1, 40),
        class_names=tuple(str(i) for i in range(10)),
        homepage="https://github.com/greydanus/mnist1d",
        citation="Greydanus & Kobak, Scaling Down Deep Learning with MNIST-1D, ICML 2024, arXiv:2011.14439",
        options=(
            Option("num_samples", 5000, lambda n, v: check_int(n, v, minimum=10), "samples generated (train + test)"),
            Option("generation_seed", 42, _seed, "seed of the generator (the package's default is 42)"),
        ),
    )
)

_register(
    DatasetSpec(
        name="digits",
        description="scikit-learn digits: 1,797 8x8 images as 64 features (0..16), 10 classes",
        task="classification",
        kind="bundled",
        loader=tabular.load_digits_dataset,
        num_classes=10,
        input_shape=(64,),
        class_names=tuple(str(i) for i in range(10)),
        options=(_TEST_FRACTION, _SPLIT_SEED),
        homepage="https://scikit-learn.org/stable/modules/generated/sklearn.datasets.load_digits.html",
    )
)

_register(
    DatasetSpec(
        name="diabetes",
        description="scikit-learn diabetes: 442 patients, 10 features, a disease-progression target (regression)",
        task="regression",
        kind="bundled",
        loader=tabular.load_diabetes_dataset,
        input_shape=(10,),
        options=(_TEST_FRACTION, _SPLIT_SEED),
        homepage="https://scikit-learn.org/stable/modules/generated/sklearn.datasets.load_diabetes.html",
    )
)

_register(
    DatasetSpec(
        name="csv",
        description="Your CSV table: a header row, numeric feature columns and a target column",
        task="auto",
        kind="path",
        loader=tabular.load_csv_dataset,
        options=(
            Option("path", REQUIRED, _path, "the CSV file (header row first)"),
            Option("target", REQUIRED, _columns, "the target column (or a list of columns, for regression)"),
            Option(
                "task",
                "auto",
                _choice("auto", "classification", "regression"),
                "'auto' makes text or integer targets with <= 50 values classes",
            ),
            Option("test_fraction", None, _optional_fraction, "fraction of the rows held out as test (default 0.2)"),
            Option("test_path", None, _optional_path, "a separate test CSV (instead of test_fraction)"),
            Option("features", None, _optional_columns, "the feature columns (default: every other column)"),
            Option("delimiter", ",", _delimiter, "the field separator"),
            _SPLIT_SEED,
        ),
    )
)


# ---- rotated Fashion-MNIST (a regression task built from the Fashion-MNIST files) ----

_register(
    DatasetSpec(
        name="rotated_fashion_mnist",
        description=(
            "Fashion-MNIST images each rotated by a random angle; the target is the angle / 360 (regression). "
            "Optionally coloured as RCF-MNIST (C-Mixup, NeurIPS 2022)"
        ),
        task="regression",
        kind="files",
        loader=load_rotated_fashion_mnist,
        input_shape=(1, 28, 28),
        # Read from the Fashion-MNIST files, wherever fashion_mnist is found (aliases[0] names the apt folder).
        aliases=("fashion-mnist", "fashion_mnist", "fashionmnist", "FashionMNIST/raw"),
        needs=_IDX_NEEDS + " of Fashion-MNIST (`mixlab data fetch fashion_mnist` gets them)",
        has_files=idx.has_idx_files,
        apt_package="dataset-fashion-mnist",
        homepage="https://github.com/huaxiuyao/C-Mixup",
        citation=(
            "Yao, Wang, Zhang, Zou & Finn, C-Mixup: Improving Generalization in Regression, NeurIPS 2022, "
            "arXiv:2210.05775 (RCF-MNIST); images: Xiao, Rasul & Vollgraf, arXiv:1708.07747"
        ),
        options=(
            Option("num_train", None, check_optional_count, "training images drawn from the 60,000 (None: all)"),
            Option("num_test", None, check_optional_count, "test images drawn from the 10,000 (None: all)"),
            Option("max_degrees", 360.0, check_max_degrees, "angles are drawn uniformly in [0, max_degrees)"),
            Option(
                "color",
                "none",
                _choice("none", "spurious"),
                "'none' (grey) or 'spurious' (RCF-MNIST red/blue colour tied to the angle, inverted at test)",
            ),
            Option(
                "spurious_fraction",
                0.8,
                check_fraction_closed,
                "with color='spurious': share of training images whose colour follows the angle (test: the rest)",
            ),
            Option("generation_seed", 0, _seed, "seed of the angles, subsets and colours (fixed: data never move)"),
        ),
    )
)


# ---- synthetic feature-learning data from theory papers on mixup (generated in memory, no files) ----

_register(
    DatasetSpec(
        name="rare_features",
        description=(
            "Synthetic patch data, 2 classes: a common feature in most samples, a rare one in a few, weak feature "
            "noise and Gaussian noise patches (Zou et al., ICML 2023); generated in memory"
        ),
        task="classification",
        kind="generated",
        loader=synthetic.load_rare_features,
        num_classes=2,
        class_names=("0", "1"),
        citation=(
            "Zou, Cao, Li & Gu, The Benefits of Mixup for Feature Learning, ICML 2023, arXiv:2303.08433 "
            "(the feature-noise data model)"
        ),
        options=(
            Option("num_train", 300, _positive_int, "training samples"),
            Option("num_test", 2000, _positive_int, "test samples (same distribution as train)"),
            Option("dim", 600, _positive_int, "dimension d of each patch (>= 2)"),
            Option(
                "num_patches",
                3,
                _positive_int,
                "patches per sample: feature, feature noise, then Gaussian noise (>= 3)",
            ),
            Option("rare_fraction", 0.1, synthetic.check_open_fraction, "share of samples carrying the rare feature"),
            Option(
                "feature_noise", 0.1, synthetic.check_non_negative_real, "strength of the other class's common feature"
            ),
            Option("noise_std", 0.145, synthetic.check_non_negative_real, "std of each Gaussian noise coordinate"),
            Option("generation_seed", 0, _seed, "seed of the features and both splits (fixed: data never move)"),
        ),
    )
)

_register(
    DatasetSpec(
        name="multi_view",
        description=(
            "Synthetic patch data, k classes with two views (features) each: training samples show both views, "
            "test samples one (Chidambaram et al., ICML 2023); generated in memory"
        ),
        task="classification",
        kind="generated",
        loader=synthetic.load_multi_view,
        citation=(
            "Chidambaram, Wang, Wu & Ge, Provably Learning Diverse Features in Multi-View Data with Midpoint Mixup, "
            "ICML 2023, arXiv:2210.13512 (the noisy multi-view distribution)"
        ),
        homepage="https://github.com/2014mchidamb/midpoint-mixup-multi-view-icml",
        options=(
            Option("num_train", 1000, _positive_int, "training samples (the authors' simulation: 1000)"),
            Option("num_test", 1000, _positive_int, "test samples"),
            Option("num_classes", 10, lambda n, v: check_int(n, v, minimum=2), "classes k"),
            Option("dim", 81, _positive_int, "dimension d of each patch (>= 2k; the authors' 9x9 patches: 81)"),
            Option("num_patches", 9, _positive_int, "patches per sample: 2 signal, the rest feature noise (>= 3)"),
            Option("signal_range", (0.25, 0.5), synthetic.check_signal_range, "[low, high] of a view's strength"),
            Option(
                "feature_noise", 1.0, synthetic.check_non_negative_real, "feature noise = this * U(0.25, 0.75) / k^1.5"
            ),
            Option("test_views", "one", synthetic.check_test_views, "'one' view per test sample, or 'both'"),
            Option("generation_seed", 0, _seed, "seed of the features and both splits (fixed: data never move)"),
        ),
    )
)


def get_spec(name: str) -> DatasetSpec:
    """The spec registered as ``name``; unknown names raise :class:`UnknownNameError` listing the known ones.

    Example:
        >>> get_spec("mnist1d").kind
        'generated'
    """
    if not isinstance(name, str) or name not in DATASETS:
        raise UnknownNameError("dataset", name, DATASETS)
    return DATASETS[name]
