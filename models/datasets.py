"""Datasets as numpy arrays: the digits split, image folders, CSV, NPZ and Sedna index files.

Samples are float32 NCHW (images scaled to [0, 1]) and labels int64; unlabelled samples
(inference data) carry label -1. Every error is a :class:`DatasetError`, a ``ValueError``
whose message says what is wrong and where (file, line, column or key).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = [
    "IMAGE_SUFFIXES",
    "UNLABELLED",
    "ArrayDataset",
    "DatasetError",
    "Split",
    "load_csv",
    "load_digits_split",
    "load_image_folder",
    "load_index",
    "load_npz",
]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp"})
UNLABELLED = -1


class DatasetError(ValueError):
    """A dataset cannot be read; the message names the file and the place in it."""


@dataclass
class ArrayDataset:
    """Samples ``x`` (float32, N x ...) with labels ``y`` (int64, N; -1 when unlabelled)."""

    x: np.ndarray
    y: np.ndarray
    classes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise DatasetError(f"{len(self.x)} samples but {len(self.y)} labels")

    def __len__(self) -> int:
        return len(self.x)


@dataclass
class Split:
    """A train/test split of float32 N x 1 x 8 x 8 images in [0, 1] and int64 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def train(self) -> ArrayDataset:
        return ArrayDataset(self.x_train, self.y_train, [str(i) for i in range(10)])

    @property
    def test(self) -> ArrayDataset:
        return ArrayDataset(self.x_test, self.y_test, [str(i) for i in range(10)])


def load_digits_split(seed: int = 0, test_fraction: float = 0.25) -> Split:
    """scikit-learn's 8x8 digits (shipped with it: no download), stratified and seeded.

    Pixels (0..16) are scaled by 1/16 to [0, 1].
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (np.asarray(digits.images, dtype=np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = np.asarray(digits.target, dtype=np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    return Split(x_train, y_train, x_test, y_test)


def _read_image(path: Path, size: tuple[int, int] | None, grayscale: bool) -> np.ndarray:
    """One image as float32 C x H x W in [0, 1]; ``size`` is (height, width)."""
    try:
        with Image.open(path) as opened:
            img = opened.convert("L" if grayscale else "RGB")
            if size is not None and img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError) as exc:
        raise DatasetError(f"{path}: not a readable image ({exc})") from None
    return arr[None, :, :] if grayscale else arr.transpose(2, 0, 1)


def load_image_folder(
    root: str | Path, size: tuple[int, int] = (32, 32), grayscale: bool = False
) -> ArrayDataset:
    """Images under ``root/<class_name>/``; classes sorted by name, label = class index.

    Images (png, jpg, jpeg, bmp) are resized to ``size`` = (height, width).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a directory")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise DatasetError(f"{root}: no class folders (expected {root}/<class_name>/*.png)")
    xs: list[np.ndarray] = []
    ys: list[int] = []
    for label, name in enumerate(classes):
        for path in sorted((root / name).iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                xs.append(_read_image(path, size, grayscale))
                ys.append(label)
    if not xs:
        raise DatasetError(f"{root}: no images with suffix {sorted(IMAGE_SUFFIXES)}")
    return ArrayDataset(np.stack(xs), np.asarray(ys, dtype=np.int64), classes)


def load_csv(path: str | Path, label_column: str = "label") -> ArrayDataset:
    """A CSV file with a header: numeric feature columns and an integer label column."""
    path = Path(path)
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise DatasetError(f"{path}: empty file (a header line is required)")
        header = [h.strip() for h in header]
        if label_column not in header:
            raise DatasetError(f"{path}: no label column {label_column!r} in header {header}")
        rows: list[list[float]] = []
        labels: list[int] = []
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise DatasetError(
                    f"{path}:{line}: {len(row)} values but the header has {len(header)} columns"
                )
            features: list[float] = []
            for column, cell in zip(header, row, strict=True):
                try:
                    if column == label_column:
                        labels.append(int(cell))
                    else:
                        features.append(float(cell))
                except ValueError:
                    kind = "an integer label" if column == label_column else "a number"
                    raise DatasetError(
                        f"{path}:{line}: column {column!r}: {cell!r} is not {kind}"
                    ) from None
            rows.append(features)
    if not rows:
        raise DatasetError(f"{path}: no data rows")
    n_features = len(header) - 1
    x = np.asarray(rows, dtype=np.float32).reshape(len(rows), n_features)
    return ArrayDataset(x, np.asarray(labels, dtype=np.int64))


def load_npz(path: str | Path, x_key: str = "x", y_key: str = "y") -> ArrayDataset:
    """A ``.npz`` archive holding samples under ``x_key`` and labels under ``y_key``."""
    path = Path(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not a readable .npz archive ({exc})") from None
    with archive:
        for key in (x_key, y_key):
            if key not in archive.files:
                raise DatasetError(f"{path}: no array {key!r} (it holds {sorted(archive.files)})")
        x = np.asarray(archive[x_key], dtype=np.float32)
        y = np.asarray(archive[y_key])
    if not np.issubdtype(y.dtype, np.integer):
        raise DatasetError(f"{path}: labels {y_key!r} are {y.dtype}, not integers")
    return ArrayDataset(x, y.astype(np.int64))


def _parse_label(token: str, classes: Sequence[str] | None, where: str) -> int:
    if classes is not None:
        if token not in classes:
            raise DatasetError(f"{where}: label {token!r} is not one of the classes {classes}")
        return list(classes).index(token)
    try:
        return int(token)
    except ValueError:
        raise DatasetError(f"{where}: label {token!r} is not an integer") from None


def load_index(
    path: str | Path,
    *,
    size: tuple[int, int] | None = None,
    grayscale: bool = False,
    classes: Sequence[str] | None = None,
) -> ArrayDataset:
    """A Sedna-style ``txt`` index: each non-empty line is ``sample_path [label]``.

    Columns are separated by whitespace. Relative sample paths resolve against the index
    file's own directory (not the current directory), so an index travels with its data.
    A sample is an image (resized to ``size`` = (height, width) when given) or a ``.npy``
    array; all samples must end up with one shape. Lines without a label (inference data)
    get label -1. Labels are integers, or class names when ``classes`` is given.
    """
    path = Path(path)
    base = path.resolve().parent
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the index ({exc.strerror})") from None
    xs: list[np.ndarray] = []
    ys: list[int] = []
    for number, raw in enumerate(lines, start=1):
        tokens = raw.split()
        if not tokens:
            continue
        where = f"{path}:{number}"
        if len(tokens) > 2:
            raise DatasetError(f"{where}: expected 'path [label]', got {len(tokens)} columns")
        sample = Path(tokens[0])
        if not sample.is_absolute():
            sample = base / sample
        if not sample.is_file():
            raise DatasetError(f"{where}: sample file {sample} does not exist")
        if sample.suffix.lower() == ".npy":
            try:
                arr = np.asarray(np.load(sample, allow_pickle=False), dtype=np.float32)
            except (OSError, ValueError) as exc:
                raise DatasetError(f"{where}: {sample}: not a readable .npy ({exc})") from None
        elif sample.suffix.lower() in IMAGE_SUFFIXES:
            try:
                arr = _read_image(sample, size, grayscale)
            except DatasetError as exc:
                raise DatasetError(f"{where}: {exc}") from None
        else:
            raise DatasetError(f"{where}: {sample}: not an image or .npy file")
        if xs and arr.shape != xs[0].shape:
            raise DatasetError(
                f"{where}: {sample} has shape {arr.shape}, the first sample {xs[0].shape}"
                " (pass size= to resize images)"
            )
        xs.append(arr)
        ys.append(_parse_label(tokens[1], classes, where) if len(tokens) > 1 else UNLABELLED)
    if not xs:
        raise DatasetError(f"{path}: the index lists no samples")
    return ArrayDataset(np.stack(xs), np.asarray(ys, dtype=np.int64), list(classes or []))
