import gzip
import shutil

import numpy as np
import pytest

from conftest import blob_image, write_idx
from edgekit.core.errors import BadInputError
from edgekit.core.data import assign_splits, load_table, read_idx


def test_idx_round_trip_plain_and_gzip(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for name in ("a-idx3-ubyte", "a-idx3-ubyte.gz"):
        np.testing.assert_array_equal(read_idx(write_idx(tmp_path / name, array)), array)


def test_truncated_idx_file_is_named(tmp_path):
    path = write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((5, 4, 4), np.uint8))
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(BadInputError, match="truncated"):
        read_idx(path)
    broken_gz = tmp_path / "x-idx1-ubyte.gz"
    broken_gz.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x09" + bytes(9))[:-12])
    with pytest.raises(BadInputError, match="cannot read IDX"):
        read_idx(broken_gz)


def test_embedded_fashion_mnist_subset_loads_with_its_test_split(mini_data):
    table = load_table(mini_data)
    assert table.class_names[0] == "T-shirt/top" and len(table.class_names) == 10
    assert (len(table.indices("train")), len(table.indices("test"))) == (3000, 1000)
    assert table.image(0).shape == (28, 28) and table.color == "GRAY"
    assert set(np.unique(table.labels)) == set(range(10))


def test_image_folder_classes_and_labels(image_folder):
    table = load_table(image_folder)
    assert table.class_names == ("cat", "dog", "owl")
    assert np.bincount(table.labels).tolist() == [20, 20, 20]
    assert table.image(0).shape == (32, 32, 3)


def test_empty_class_folder_is_an_error(tmp_path, image_folder):
    root = tmp_path / "data"
    shutil.copytree(image_folder, root)
    (root / "zebra").mkdir()
    with pytest.raises(BadInputError, match="zebra has no images"):
        load_table(root)


def test_corrupt_image_is_skipped_and_counted(tmp_path, image_folder, caplog):
    root = tmp_path / "data"
    shutil.copytree(image_folder, root)
    (root / "cat" / "broken.png").write_bytes(b"\x89PNG not really")
    table = load_table(root)
    assert len(table) == 60 and len(table.skipped) == 1 and table.skipped[0].endswith("broken.png")
    assert "skipped 1 unreadable image" in caplog.text


def test_group_split_never_puts_one_person_in_two_splits(tmp_path):
    import cv2

    rng = np.random.default_rng(0)
    rows = ["path,label,subject"]
    for i in range(120):
        label = ["safe", "phone"][i % 2]
        cv2.imwrite(str(tmp_path / f"{i}.png"), blob_image(i % 2, rng, 16))
        rows.append(f"{i}.png,{label},p{i % 12}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    table = load_table(tmp_path / "labels.csv", group_column="subject")
    assign_splits(table, val_fraction=0.2, test_fraction=0.2, seed=3)
    owners = {}
    for group, split in zip(table.groups, table.split):
        owners.setdefault(group, set()).add(split)
    assert all(len(splits) == 1 for splits in owners.values())
    assert {s for splits in owners.values() for s in splits} == {"train", "val", "test"}


def test_stratified_split_keeps_class_balance():
    from edgekit.core.data import ImageTable

    labels = np.repeat(np.arange(4), 50)
    table = ImageTable(labels=labels, class_names=tuple("abcd"), color="GRAY",
                       arrays=np.zeros((200, 2, 2), np.uint8))
    assign_splits(table, val_fraction=0.1, test_fraction=0.2, seed=0)
    assert table.class_counts("test").tolist() == [10, 10, 10, 10]
    assert table.class_counts("val").tolist() == [5, 5, 5, 5]


def test_csv_with_missing_column_or_file(tmp_path):
    (tmp_path / "a.csv").write_text("file,label\nx.png,cat\n")
    with pytest.raises(BadInputError, match="no column 'path'"):
        load_table(tmp_path / "a.csv")
    (tmp_path / "b.csv").write_text("path,label\nx.png,cat\n")
    with pytest.raises(BadInputError, match="do not exist"):
        load_table(tmp_path / "b.csv")
