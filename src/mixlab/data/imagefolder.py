"""Image folders: ``<path>/train/<class>/*.png`` (and ``test/`` or ``val/``), or one ``<path>/<class>/`` tree.

Images are decoded with Pillow, converted to RGB (or to grayscale with ``grayscale=True``) and resized
to ``image_size`` x ``image_size``. Small folders are decoded once into an :class:`ArrayData`; large
ones come back as :class:`ImageFolderData`, which reads each file when it is asked for.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from mixlab.data.base import ArrayData, DataSplits
from mixlab.data.splits import rng_for, stratified_split
from mixlab.errors import MixlabValueError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
# Decode everything up front when the uint8 tensors of all splits fit in this many bytes.
IN_MEMORY_LIMIT = 512 * 1024**2
_BILINEAR = getattr(Image, "Resampling", Image).BILINEAR


def read_image(path: str | os.PathLike, image_size: int, channels: int) -> torch.Tensor:
    """Decode one image file into a uint8 tensor ``(channels, image_size, image_size)``.

    An unreadable file raises a :class:`MixlabValueError` naming it.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     Image.new("RGB", (5, 7), (255, 0, 0)).save(Path(d, "red.png"))
        ...     t = read_image(Path(d, "red.png"), 4, 3)
        >>> tuple(t.shape), t[:, 0, 0].tolist()
        ((3, 4, 4), [255, 0, 0])
    """
    try:
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB")
            if img.size != (image_size, image_size):
                img = img.resize((image_size, image_size), _BILINEAR)
            array = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        # Pillow reports broken files with any of these (SyntaxError for some malformed headers).
        raise MixlabValueError(f"{path}: cannot read image ({type(err).__name__}: {err})") from err
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


class ImageFolderData(torch.utils.data.Dataset):
    """A split of image files read lazily with Pillow.

    ``data[i]`` is ``(uint8 tensor (channels, image_size, image_size), int label)``.

    Attributes:
        paths: the image files, one per sample.
        labels: int64 tensor of class indices.
        classes: the class names (index -> name).
        image_size: the side every image is resized to.
        channels: 3 (RGB) or 1 (grayscale).

    Example:
        >>> data = ImageFolderData([], torch.zeros(0, dtype=torch.int64), ["cat", "dog"], 32, 3)
        >>> len(data), data.classes
        (0, ['cat', 'dog'])
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        labels: torch.Tensor,
        classes: Sequence[str],
        image_size: int,
        channels: int,
    ):
        if len(paths) != len(labels):
            raise MixlabValueError(
                f"ImageFolderData needs one label per path; got {len(paths)} paths, {len(labels)} labels"
            )
        if channels not in (1, 3):
            raise MixlabValueError(f"channels must be 1 or 3; got {channels!r}")
        self.paths = [str(p) for p in paths]
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        self.classes = list(classes)
        self.image_size = int(image_size)
        self.channels = int(channels)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return read_image(self.paths[index], self.image_size, self.channels), int(self.labels[index])

    @property
    def y(self) -> torch.Tensor:
        """The labels (the name :class:`ArrayData` uses)."""
        return self.labels

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """``(channels, image_size, image_size)``."""
        return (self.channels, self.image_size, self.image_size)

    def subset(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> ImageFolderData:
        """A new ImageFolderData with the samples at ``indices``, in that order."""
        index = np.asarray(indices, dtype=np.int64)
        return ImageFolderData(
            [self.paths[i] for i in index],
            self.labels[torch.from_numpy(index)],
            self.classes,
            self.image_size,
            self.channels,
        )

    def with_labels(self, labels: torch.Tensor) -> ImageFolderData:
        """A new ImageFolderData with the same files and ``labels``."""
        return ImageFolderData(self.paths, labels, self.classes, self.image_size, self.channels)

    def to_array(self) -> ArrayData:
        """Decode every image into one :class:`ArrayData`."""
        x = torch.empty((len(self), *self.sample_shape), dtype=torch.uint8)
        for i, path in enumerate(self.paths):
            x[i] = read_image(path, self.image_size, self.channels)
        return ArrayData(x, self.labels.clone())


def scan_classes(class_root: Path) -> dict[str, list[Path]]:
    """Map each class folder under ``class_root`` (sorted by name) to its sorted image files."""
    if not class_root.is_dir():
        raise MixlabValueError(f"{class_root}: not a directory")
    found = {}
    for folder in sorted(p for p in class_root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if files:
            found[folder.name] = files
    if not found:
        raise MixlabValueError(
            f"{class_root}: no class folders with images (expected {class_root}/<class>/<image> with an extension "
            f"among {', '.join(IMAGE_EXTENSIONS)})"
        )
    return found


def _labelled(found: dict[str, list[Path]], classes: list[str], root: Path) -> tuple[list[Path], torch.Tensor]:
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise MixlabValueError(f"{root}: class folders {unknown} are not among the train classes {classes}")
    index = {name: i for i, name in enumerate(classes)}
    paths = [p for name in found for p in found[name]]
    labels = [index[name] for name in found for _ in found[name]]
    return paths, torch.tensor(labels, dtype=torch.int64)


def load_imagefolder(root: Path | None, spec, options: dict) -> DataSplits:
    """Build the :class:`DataSplits` of an image folder (options: path, image_size, grayscale, in_memory, ...)."""
    path = Path(options["path"]).expanduser()
    if not path.is_dir():
        raise MixlabValueError(f"imagefolder path {str(path)!r} is not a directory")
    size, channels = options["image_size"], 1 if options["grayscale"] else 3
    info: dict = {"source": str(path), "image_size": size, "channels": channels}
    if (path / "train").is_dir():
        classes, parts = _split_folders(path, info)
    else:
        classes, parts = _split_single(path, options, info)
    made = {name: ImageFolderData(paths, labels, classes, size, channels) for name, (paths, labels) in parts.items()}
    made = _maybe_in_memory(made, options["in_memory"], info)
    return DataSplits(
        spec.name,
        "classification",
        made["train"],
        made.get("val"),
        made["test"],
        len(classes),
        (channels, size, size),
        classes,
        info,
    )


def _split_folders(path: Path, info: dict) -> tuple[list[str], dict]:
    """The ``train/`` + ``test/`` (+ optional ``val/``) layout; ``val/`` alone serves as the test split."""
    folders = {"train": path / "train"}
    if (path / "test").is_dir():
        folders["test"] = path / "test"
        if (path / "val").is_dir():
            folders["val"] = path / "val"
    elif (path / "val").is_dir():
        folders["test"] = path / "val"
    else:
        raise MixlabValueError(f"{path}: has train/ but neither test/ nor val/; add one, or drop train/ to split")
    info["layout"] = {name: str(folder) for name, folder in folders.items()}
    classes = list(scan_classes(folders["train"]))
    return classes, {name: _labelled(scan_classes(folder), classes, folder) for name, folder in folders.items()}


def _split_single(path: Path, options: dict, info: dict) -> tuple[list[str], dict]:
    """One ``<class>/`` tree: a seeded stratified ``test_fraction`` of each class becomes the test split."""
    found = scan_classes(path)
    classes = list(found)
    paths, labels = _labelled(found, classes, path)
    fraction, seed = options["test_fraction"], options["split_seed"]
    kept, held = stratified_split(labels, fraction, rng_for(seed, "test"))
    if len(kept) == 0 or len(held) == 0:
        raise MixlabValueError(
            f"{path}: test_fraction={fraction} of {len(paths)} images leaves {len(kept)} for train and "
            f"{len(held)} for test; both need at least one"
        )
    info["layout"] = {"classes_root": str(path), "test_fraction": fraction, "split_seed": seed}
    return classes, {
        "train": ([paths[i] for i in kept], labels[torch.from_numpy(kept)]),
        "test": ([paths[i] for i in held], labels[torch.from_numpy(held)]),
    }


def _maybe_in_memory(made: dict[str, ImageFolderData], in_memory: bool | str, info: dict) -> dict:
    total = sum(len(d) * int(np.prod(d.sample_shape)) for d in made.values())
    decode = total <= IN_MEMORY_LIMIT if in_memory == "auto" else bool(in_memory)
    info["in_memory"] = decode
    info["decoded_bytes" if decode else "lazy_bytes"] = total
    return {name: d.to_array() for name, d in made.items()} if decode else made
