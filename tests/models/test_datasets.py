"""Dataset loaders: the digits split, image folders, CSV, NPZ and Sedna index files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from orbiter.models.datasets import (
    UNLABELLED,
    DatasetError,
    load_csv,
    load_digits_split,
    load_image_folder,
    load_index,
    load_npz,
)
from PIL import Image


def _png(path: Path, value: int, size: tuple[int, int] = (6, 4), mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, 0, 255)).save(path)


def test_digits_split_is_deterministic_stratified_and_scaled() -> None:
    a, b = load_digits_split(seed=0), load_digits_split(seed=0)
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.y_test, load_digits_split(seed=1).y_test)
    assert a.x_train.shape == (1347, 1, 8, 8) and a.x_test.shape == (450, 1, 8, 8)
    assert a.x_train.dtype == np.float32 and a.y_train.dtype == np.int64
    assert a.x_train.min() == 0.0 and a.x_train.max() == 1.0  # pixel / 16
    # Stratified: every class has the same share (within one sample) in both parts.
    train_share = np.bincount(a.y_train) / len(a.y_train)
    test_share = np.bincount(a.y_test) / len(a.y_test)
    assert np.abs(train_share - test_share).max() < 1 / len(a.y_test) + 1e-9
    assert len(a.train) == 1347 and a.test.classes == [str(i) for i in range(10)]


def test_image_folder(tmp_path: Path) -> None:
    _png(tmp_path / "dog" / "a.png", 255)
    _png(tmp_path / "cat" / "b.PNG", 0, mode="RGB")
    _png(tmp_path / "cat" / "c.bmp", 51)
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    ds = load_image_folder(tmp_path, size=(2, 3), grayscale=True)
    assert ds.classes == ["cat", "dog"]
    assert ds.x.shape == (3, 1, 2, 3) and ds.x.dtype == np.float32
    assert ds.y.tolist() == [0, 0, 1]
    assert ds.x[1].max() == pytest.approx(0.2) and ds.x[2].min() == 1.0
    rgb = load_image_folder(tmp_path, size=(4, 4))
    assert rgb.x.shape == (3, 3, 4, 4)
    assert rgb.x[0, 2].max() == 1.0  # the blue channel of the RGB image, scaled to [0, 1]


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no class folders"):
        load_image_folder(tmp_path)
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"broken\.png: not a readable image"):
        load_image_folder(tmp_path)


def test_csv(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("f1,label,f2\n0.5,1,2\n\n-1e3,0,3.25\n")
    ds = load_csv(path)
    assert ds.x.tolist() == [[0.5, 2.0], [-1000.0, 3.25]]
    assert ds.x.dtype == np.float32 and ds.y.tolist() == [1, 0] and ds.y.dtype == np.int64


def test_csv_errors_name_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("f1,f2,label\n1,2,0\n3,oops,1\n")
    with pytest.raises(DatasetError, match=r"bad\.csv:3: column 'f2': 'oops' is not a number"):
        load_csv(path)
    path.write_text("f1,f2,label\n1,2,x\n")
    with pytest.raises(DatasetError, match=r":2: column 'label': 'x' is not an integer label"):
        load_csv(path)
    path.write_text("f1,f2,target\n1,2,0\n")
    with pytest.raises(DatasetError, match="no label column 'label'"):
        load_csv(path)
    assert load_csv(path, label_column="target").y.tolist() == [0]
    path.write_text("f1,f2,label\n1,2\n")
    with pytest.raises(DatasetError, match=r":2: 2 values but the header has 3 columns"):
        load_csv(path)


def test_npz(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    np.savez(path, x=np.ones((3, 4), dtype=np.float64), labels=np.arange(3))
    with pytest.raises(
        DatasetError, match=r"data\.npz: no array 'y' \(it holds \['labels', 'x'\]\)"
    ):
        load_npz(path)
    ds = load_npz(path, y_key="labels")
    assert ds.x.dtype == np.float32 and ds.y.tolist() == [0, 1, 2]


def test_sedna_index_resolves_paths_against_its_own_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "dataset"
    _png(data / "images" / "a.png", 255, size=(4, 4))
    _png(data / "images" / "b.png", 0, size=(8, 8))
    np.save(data / "c.npy", np.full((1, 4, 4), 0.5))
    _png(tmp_path / "elsewhere" / "d.png", 255, size=(4, 4))
    index = data / "train.txt"
    index.write_text(
        f"images/a.png 3\n\n  images/b.png\t1  \nc.npy\n{tmp_path / 'elsewhere' / 'd.png'} 0\n"
    )
    monkeypatch.chdir(tmp_path / "elsewhere")  # relative paths must not resolve from here
    ds = load_index(index, size=(4, 4), grayscale=True)
    assert ds.x.shape == (4, 1, 4, 4) and ds.x.dtype == np.float32
    assert ds.y.tolist() == [3, 1, UNLABELLED, 0]
    assert ds.x[0].min() == 1.0 and ds.x[1].max() == 0.0 and ds.x[2].max() == 0.5


def test_sedna_index_class_names(tmp_path: Path) -> None:
    _png(tmp_path / "a.png", 9)
    (tmp_path / "index.txt").write_text("a.png dog\n")
    ds = load_index(tmp_path / "index.txt", classes=["cat", "dog"])
    assert ds.y.tolist() == [1] and ds.classes == ["cat", "dog"]
    with pytest.raises(DatasetError, match=r"index\.txt:1: label 'dog' is not an integer"):
        load_index(tmp_path / "index.txt")


def test_sedna_index_errors_name_the_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _png(tmp_path / "a.png", 9)
    _png(tmp_path / "big.png", 9, size=(8, 8))
    index = tmp_path / "index.txt"
    index.write_text("a.png 0\n\nmissing.png 1\n")
    monkeypatch.chdir("/")
    with pytest.raises(DatasetError) as err:
        load_index(index)
    assert f"index.txt:3: sample file {tmp_path / 'missing.png'} does not exist" in str(err.value)
    index.write_text("a.png 0\nbig.png 1\n")
    with pytest.raises(DatasetError, match=r"index\.txt:2: .*big\.png has shape \(3, 8, 8\)"):
        load_index(index)
    index.write_text("a.png 0 extra\n")
    with pytest.raises(DatasetError, match=r"index\.txt:1: expected 'path \[label\]'"):
        load_index(index)
    index.write_text("index.txt\n")
    with pytest.raises(DatasetError, match=r"index\.txt:1: .*not an image or \.npy file"):
        load_index(index)
    with pytest.raises(DatasetError, match="cannot read the index"):
        load_index(tmp_path / "absent.txt")
