"""IDX parsing against hand-written bytes, write/read round trips, corrupt files, IDX and Fashion-MNIST folders."""
from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from prunekit.data import load_data
from prunekit.data.idx import read_idx, write_idx
from prunekit.errors import InputError


def test_read_hand_written_ubyte_images(tmp_path):
    # magic 0x00000803 (unsigned byte, 3 dims), dims 2 x 2 x 3, then 12 bytes
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">iii", 2, 2, 3) + bytes(range(12)))
    arr = read_idx(path)
    assert arr.dtype == np.uint8
    np.testing.assert_array_equal(arr, np.arange(12).reshape(2, 2, 3))


def test_read_hand_written_gzipped_int32_labels(tmp_path):
    path = tmp_path / "y-idx1-int.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x0c\x01" + struct.pack(">i", 3) + struct.pack(">iii", 7, -1, 65536)))
    np.testing.assert_array_equal(read_idx(path), [7, -1, 65536])


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_write_read_round_trip(tmp_path, dtype, suffix):
    arr = (np.random.default_rng(0).normal(size=(3, 4, 5)) * 50).astype(dtype)
    back = read_idx(write_idx(tmp_path / f"a-idx3{suffix}", arr))
    assert back.dtype == arr.dtype
    np.testing.assert_array_equal(back, arr)


def test_written_bytes_follow_the_format(tmp_path):
    write_idx(tmp_path / "b", np.array([[1, 2]], np.int16))
    assert (tmp_path / "b").read_bytes() == b"\x00\x00\x0b\x02" + struct.pack(">ii", 1, 2) + struct.pack(">hh", 1, 2)


@pytest.mark.parametrize(
    "content,match",
    [
        (b"\x00\x00\x08\x03" + struct.pack(">iii", 2, 2, 3) + bytes(range(11)), "truncated"),
        (b"\x00\x00\x08\x03" + struct.pack(">ii", 2, 2), "truncated"),
        (b"\x00\x00\x08\x01" + struct.pack(">i", 2) + bytes(3), "longer"),
        (b"\x12\x34\x08\x01" + struct.pack(">i", 1) + bytes(1), "magic"),
        (b"\x00\x00\x07\x01" + struct.pack(">i", 1) + bytes(1), "magic"),
        (b"", "magic"),
    ],
)
def test_corrupt_file_raises_input_error_naming_it(tmp_path, content, match):
    path = tmp_path / "broken-idx3-ubyte"
    path.write_bytes(content)
    with pytest.raises(InputError, match=match) as info:
        read_idx(path)
    assert "broken-idx3-ubyte" in str(info.value)


def test_corrupt_gzip_raises_input_error(tmp_path):
    path = tmp_path / "bad.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + struct.pack(">i", 50) + bytes(50))[:20])
    with pytest.raises(InputError, match="bad.gz"):
        read_idx(path)


def mnist_folder(folder, n_train=60, n_test=20, side=6, gz=True):
    """A tiny MNIST-layout folder: balanced labels 0..9, images whose first pixel is the sample id."""
    ext = ".gz" if gz else ""
    rng = np.random.default_rng(1)
    arrays = {}
    for prefix, n, offset in (("train", n_train, 0), ("t10k", n_test, 100)):
        x = rng.integers(0, 256, size=(n, side, side)).astype(np.uint8)
        x[:, 0, 0] = np.arange(n) + offset
        y = (np.arange(n) % 10).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", x)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", y)
        arrays[prefix] = (x, y)
    return arrays


def test_idx_folder_keeps_the_official_test_split(tmp_path):
    arrays = mnist_folder(tmp_path, gz=False)
    data = load_data(name="idx", path=str(tmp_path), normalize="none", val_fraction=0.2)
    assert data.input_shape == (1, 6, 6) and data.num_classes == 10
    x_test, y_test = arrays["t10k"]
    np.testing.assert_array_equal(data.x_test[:, 0].numpy(), x_test.astype(np.float32))  # test split untouched
    np.testing.assert_array_equal(data.y_test.numpy(), y_test)
    assert len(data.x_val) == 12 and len(data.x_train) == 48  # 20% of the 60 training images
    train_ids = set(data.x_train[:, 0, 0, 0].long().tolist()) | set(data.x_val[:, 0, 0, 0].long().tolist())
    assert train_ids == set(range(60))


def test_idx_explicit_files_and_missing_file(tmp_path):
    write_idx(tmp_path / "imgs.gz", np.arange(40 * 4, dtype=np.uint8).reshape(40, 2, 2))
    write_idx(tmp_path / "labs.gz", (np.arange(40) % 2).astype(np.uint8))
    data = load_data(name="idx", path=str(tmp_path), files={"x_train": "imgs.gz", "y_train": "labs.gz"}, layout="flat")
    assert data.input_shape == (4,) and len(data.x_train) + len(data.x_val) + len(data.x_test) == 40
    with pytest.raises(InputError, match="nope.gz"):
        load_data(name="idx", path=str(tmp_path), files={"x_train": "imgs.gz", "y_train": "nope.gz"})


def test_idx_label_count_mismatch_names_the_split(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((10, 2, 2), np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(9, np.uint8))
    with pytest.raises(InputError, match="x_train has 10 samples but y_train has 9"):
        load_data(name="idx", path=str(tmp_path))


def test_idx_folder_without_train_files_lists_what_it_found(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(InputError, match="readme.txt"):
        load_data(name="idx", path=str(tmp_path))


def test_fashion_mnist_loader_on_a_tiny_copy(tmp_path):
    mnist_folder(tmp_path, n_train=200)  # val: 30 (3 per class), train: 170 (17 per class)
    data = load_data(name="fashion_mnist", path=str(tmp_path), train_subset=30, normalize="unit")
    assert data.class_names[0] == "T-shirt/top" and data.class_names[9] == "Ankle boot" and data.num_classes == 10
    assert data.input_shape == (1, 6, 6) and len(data.x_train) == 30 and len(data.x_test) == 20
    assert torch.equal(data.y_train.bincount(minlength=10), torch.full((10,), 3))  # stratified subset: 3 per class
    assert float(data.x_train.max()) <= 1.0


def test_fashion_mnist_missing_folder_says_how_to_install(tmp_path):
    with pytest.raises(InputError, match="apt-get install dataset-fashion-mnist"):
        load_data(name="fashion_mnist", path=str(tmp_path / "absent"))
