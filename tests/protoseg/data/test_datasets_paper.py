"""Loaders of the paper's datasets (ADE20K, Cityscapes, COCO-Stuff-164k / -10k) in their real on-disk layouts,
and the fixtures that write those layouts."""
from __future__ import annotations

import csv
from pathlib import Path

import mmcv
import numpy as np
import pytest
from PIL import Image

from protoseg.config import SpecError, resolve
from protoseg.data import DATASETS, build_dataset
from protoseg.data.ade20k import ADE20K
from protoseg.data.cityscapes import Cityscapes
from protoseg.data.cocostuff import COCOStuff10k, COCOStuff164k
from protoseg.data.fixtures import write_fixture
from protoseg.registry import DATASETS as ENTRIES, NEEDS_ROOT

from conftest import SHARED_DATA

SHARED = SHARED_DATA / "ade20k-samples"
ADE_SAMPLES = SHARED / "ADEChallengeData2016"
needs_ade_samples = pytest.mark.skipif(not ADE_SAMPLES.is_dir(), reason=f"ADE20K samples not found at {ADE_SAMPLES}")

PAPER = ("ade20k", "cityscapes", "coco_stuff164k", "coco_stuff10k")
SIZE = (64, 96)
# a folder name each dataset's layout message must show
LAYOUT_WORD = {"ade20k": "annotations/", "cityscapes": "leftImg8bit/", "coco_stuff164k": "train2017/",
               "coco_stuff10k": "imageLists/"}


def _config(name: str, root) -> dict:
    return resolve({"data": {"dataset": name, "root": str(root)}})["data"]


def _tiled(ids, size=SIZE) -> np.ndarray:
    """A label image of `size` repeating `ids` pixel by pixel."""
    return np.resize(np.asarray(ids, np.uint8), size)


def _write_label(path: Path, ids) -> None:
    assert mmcv.imwrite(_tiled(ids), str(path))


# ---------------------------------------------------------------- every loader, fixture in the real layout

@pytest.mark.parametrize("name", PAPER + ("camvid",))
def test_fixture_loads_through_build_dataset(tmp_path, name):
    cfg = _config(name, write_fixture(name, tmp_path / name, images=3))
    for role in ("train", "val"):
        data = build_dataset(cfg, role)
        assert len(data) == 3 and data.num_classes == ENTRIES[name].num_classes == len(data.class_names)
        for i in range(len(data)):
            image, label = data.load(i)
            assert image.shape == (*SIZE, 3) and image.dtype == np.uint8
            assert label.shape == SIZE and label.dtype == np.uint8
            assert set(np.unique(label).tolist()) <= set(range(data.num_classes)) | {255}
            assert (label[:2] == 255).all(), "the fixture's ignore band must load as 255"
            assert (label[2:] != 255).any()
        x, y = data[(0, 7)]
        assert x.shape == (3, 128, 128) and y.shape == (128, 128)


def test_fixture_is_a_function_of_the_seed(tmp_path):
    a, b, c = (write_fixture("ade20k", tmp_path / n, images=1, seed=s) for n, s in (("a", 1), ("b", 1), ("c", 2)))
    loads = [ADE20K(root, "train").load(0) for root in (a, b, c)]
    np.testing.assert_array_equal(loads[0][1], loads[1][1])
    assert not np.array_equal(loads[0][1], loads[2][1])


def test_write_fixture_unknown_name_lists_valid_ones():
    named = ", ".join(name for name, entry in ENTRIES.items() if entry.fixture)
    assert "camvid, ade20k, cityscapes" in named
    with pytest.raises(ValueError, match=f"'kitti'.*{named}"):
        write_fixture("kitti", "/tmp/unused")


def test_registry_names_classes_and_roots():
    for name in PAPER:
        assert name in NEEDS_ROOT and DATASETS[name].name == name
        assert len(set(DATASETS[name].class_names)) == ENTRIES[name].num_classes
    assert (ENTRIES["ade20k"].num_classes, ENTRIES["cityscapes"].num_classes) == (150, 19)
    assert ENTRIES["coco_stuff164k"].num_classes == ENTRIES["coco_stuff10k"].num_classes == 171
    with pytest.raises(SpecError, match="'data.root' is not set"):
        resolve({"data": {"dataset": "cityscapes"}})


# ---------------------------------------------------------------- wrong or missing roots, corrupt files

@pytest.mark.parametrize("name", PAPER)
def test_missing_root_shows_the_expected_layout(tmp_path, name):
    for root in (None, tmp_path / "nowhere"):
        with pytest.raises(FileNotFoundError, match="expected layout") as err:
            build_dataset(_config(name, root) if root else _config(name, "x") | {"root": None}, "train")
        assert LAYOUT_WORD[name] in str(err.value) and str(root) in str(err.value)


@pytest.mark.parametrize("name", PAPER)
def test_root_in_another_layout_shows_the_expected_layout(tmp_path, name):
    root = write_fixture("camvid", tmp_path / "camvid", images=1)
    with pytest.raises(FileNotFoundError, match="expected layout") as err:
        build_dataset(_config(name, root), "train")
    assert LAYOUT_WORD[name] in str(err.value) and str(root) in str(err.value)


@pytest.mark.parametrize("cls, name, folder", [(ADE20K, "ade20k", "images/training"),
                                               (Cityscapes, "cityscapes", "leftImg8bit/train/aachen"),
                                               (COCOStuff164k, "coco_stuff164k", "images/train2017"),
                                               (COCOStuff10k, "coco_stuff10k", "images/train2014")])
def test_corrupt_image_names_the_file(tmp_path, cls, name, folder):
    root = write_fixture(name, tmp_path, images=2)
    data = cls(root, "train")
    image = data.pairs[1][0]
    assert image.parent == root / folder
    image.write_bytes(b"not an image at all")
    data.load(0)
    with pytest.raises(ValueError, match=f"{image.name}.*decode"):
        data.load(1)


def test_unknown_split_lists_valid_splits(tmp_path):
    root = write_fixture("cityscapes", tmp_path, images=1)
    with pytest.raises(ValueError, match="'training'.*valid: train, val, test"):
        Cityscapes(root, "training")
    with pytest.raises(ValueError, match="'valid'.*valid: training, validation, train, val"):
        ADE20K(root, "valid")
    with pytest.raises(ValueError, match="'val2014'"):
        COCOStuff164k(root, "val2014")


def test_image_without_label_names_the_expected_file(tmp_path):
    root = write_fixture("ade20k", tmp_path, images=2)
    (root / "annotations" / "training" / "ADE_train_00000002.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"annotations/training/ADE_train_00000002\.png.*ADE_train_00000002\.jpg"):
        ADE20K(root, "training")


def test_label_with_three_channels_is_rejected(tmp_path):
    root = write_fixture("ade20k", tmp_path, images=1)
    label = root / "annotations" / "training" / "ADE_train_00000001.png"
    assert mmcv.imwrite(np.zeros((*SIZE, 3), np.uint8), str(label))
    with pytest.raises(ValueError, match=f"{label.name}.*single-channel"):
        ADE20K(root, "training").load(0)


def test_image_and_label_of_other_sizes_are_rejected(tmp_path):
    root = write_fixture("ade20k", tmp_path, images=1)
    label = root / "annotations" / "training" / "ADE_train_00000001.png"
    assert mmcv.imwrite(np.ones((32, 32), np.uint8), str(label))
    with pytest.raises(ValueError, match=r"ADE_train_00000001\.jpg is \(64, 96\).*\(32, 32\)"):
        ADE20K(root, "training").load(0)


# ---------------------------------------------------------------- ADE20K

def test_ade20k_reduce_zero_label(tmp_path):
    root = write_fixture("ade20k", tmp_path, images=1)
    _write_label(root / "annotations" / "validation" / "ADE_val_00000001.png", [0, 1, 2, 75, 150])
    _, label = ADE20K(root, "validation").load(0)
    np.testing.assert_array_equal(label, _tiled([255, 0, 1, 74, 149]))


def test_ade20k_split_aliases(tmp_path):
    root = write_fixture("ade20k", tmp_path, images=2)
    assert ADE20K(root, "train").pairs == ADE20K(root, "training").pairs
    assert ADE20K(root, "val").pairs == ADE20K(root, "validation").pairs
    assert ADE20K(root, "val").pairs[0][0] == root / "images" / "validation" / "ADE_val_00000001.jpg"


def test_ade20k_label_out_of_range_names_file_id_and_range(tmp_path):
    root = write_fixture("ade20k", tmp_path, images=1)
    _write_label(root / "annotations" / "training" / "ADE_train_00000001.png", [3, 151])
    with pytest.raises(ValueError, match=r"ADE_train_00000001\.png: label id 151 is out of range.*0\.\.150"):
        ADE20K(root, "training").load(0)


def test_ade20k_class_names_follow_object_info_150():
    assert ADE20K.class_names[:5] == ["wall", "building", "sky", "floor", "tree"]
    assert ADE20K.class_names[-1] == "flag" and len(ADE20K.class_names) == 150
    table = SHARED / "objectInfo150.csv"
    if not table.is_file():
        pytest.skip(f"objectInfo150.csv not found at {table}")
    rows = list(csv.DictReader(table.open()))
    assert [int(row["Idx"]) for row in rows] == list(range(1, 151))
    for name, row in zip(ADE20K.class_names, rows):
        # the csv writes spaces as ';' too ("chest;of;drawers;chest;bureau;dresser"); mmseg's name is one of the
        # synonyms ("television;television;receiver;..." is "television receiver") and shares the first word
        words = row["Name"].split(";")
        assert name.split()[0] == words[0] and f";{name.replace(' ', ';')};" in f";{row['Name']};", (name, words)


@needs_ade_samples
def test_ade20k_real_validation_samples():
    cfg = resolve({"data": {"dataset": "ade20k", "root": str(ADE_SAMPLES), "val_split": "validation"}})["data"]
    data = build_dataset(cfg, "val")
    assert len(data) == 3 and data.num_classes == 150
    shapes = []
    for i, (_, label_path) in enumerate(data.pairs):
        image, label = data.load(i)
        raw = np.asarray(Image.open(label_path))
        shapes.append(image.shape)
        assert image.shape[:2] == label.shape == raw.shape and image.dtype == np.uint8
        assert (raw == 0).any() and (raw > 0).any()
        np.testing.assert_array_equal(label == 255, raw == 0)
        np.testing.assert_array_equal(label[raw > 0], raw[raw > 0] - 1)
    assert shapes[0] == (512, 683, 3)


# ---------------------------------------------------------------- Cityscapes

def _cityscapes_label(root: Path, kind: str) -> Path:
    return root / "gtFine" / "train" / "aachen" / f"aachen_000000_000019_gtFine_{kind}.png"


def test_cityscapes_label_ids_become_train_ids_without_train_id_files(tmp_path):
    root = write_fixture("cityscapes", tmp_path, images=2)
    for path in (root / "gtFine").rglob("*_labelTrainIds.png"):
        path.unlink()
    raw = [0, 1, 6, 7, 8, 11, 17, 20, 23, 24, 26, 31, 33, 34, 255, 9, 10, 14, 15, 16, 18, 29, 30]
    train = [255, 255, 255, 0, 1, 2, 5, 7, 10, 11, 13, 16, 18, 255, 255] + [255] * 8
    _write_label(_cityscapes_label(root, "labelIds"), raw)
    data = Cityscapes(root, "train")
    assert data.pairs[0][1].name.endswith("_gtFine_labelIds.png")
    np.testing.assert_array_equal(data.load(0)[1], _tiled(train))


def test_cityscapes_prefers_train_id_files(tmp_path):
    root = write_fixture("cityscapes", tmp_path, images=1)
    _write_label(_cityscapes_label(root, "labelTrainIds"), [0, 18, 255])
    _write_label(_cityscapes_label(root, "labelIds"), [33])
    data = Cityscapes(root, "train")
    np.testing.assert_array_equal(data.load(0)[1], _tiled([0, 18, 255]))
    assert data.pairs[0] == (root / "leftImg8bit" / "train" / "aachen" / "aachen_000000_000019_leftImg8bit.png",
                             _cityscapes_label(root, "labelTrainIds"))


def test_cityscapes_train_id_out_of_range_names_file_and_range(tmp_path):
    root = write_fixture("cityscapes", tmp_path, images=1)
    _write_label(_cityscapes_label(root, "labelTrainIds"), [0, 19])
    with pytest.raises(ValueError, match=r"labelTrainIds\.png: label id 19 is out of range.*0\.\.18 and 255"):
        Cityscapes(root, "train").load(0)


def test_cityscapes_without_any_label_names_both_files(tmp_path):
    root = write_fixture("cityscapes", tmp_path, images=1)
    for kind in ("labelTrainIds", "labelIds"):
        _cityscapes_label(root, kind).unlink()
    with pytest.raises(FileNotFoundError, match=r"_gtFine_labelTrainIds\.png or .*_gtFine_labelIds\.png"):
        Cityscapes(root, "train")


def test_cityscapes_images_are_rgb_and_cities_are_walked(tmp_path):
    root = write_fixture("cityscapes", tmp_path, images=1)
    red = np.zeros((*SIZE, 3), np.uint8)
    red[..., 0] = 255
    Image.fromarray(red).save(root / "leftImg8bit" / "val" / "frankfurt" / "frankfurt_000000_000019_leftImg8bit.png")
    np.testing.assert_array_equal(Cityscapes(root, "val").load(0)[0], red)
    other = root / "leftImg8bit" / "val" / "bremen"
    other.mkdir()
    (other / "bremen_000001_000019_leftImg8bit.png").write_bytes(
        (root / "leftImg8bit" / "val" / "frankfurt" / "frankfurt_000000_000019_leftImg8bit.png").read_bytes())
    with pytest.raises(FileNotFoundError, match=r"gtFine/val/bremen/bremen_000001_000019_gtFine_labelTrainIds"):
        Cityscapes(root, "val")


# ---------------------------------------------------------------- COCO-Stuff-164k

def _coco164k_label(root: Path, suffix: str = "") -> Path:
    return root / "annotations" / "train2017" / f"000000000001{suffix}.png"


def test_coco164k_raw_ids_map_to_171_train_ids(tmp_path):
    root = write_fixture("coco_stuff164k", tmp_path, images=2)
    for path in (root / "annotations").rglob("*_labelTrainIds.png"):
        path.unlink()
    # unused thing ids (11, 25, ...) never occur in real maps; they load as ignore
    raw = [0, 10, 12, 24, 26, 27, 30, 43, 45, 64, 66, 69, 71, 81, 83, 89, 91, 92, 181, 255, 11, 90]
    train = [0, 10, 11, 23, 24, 25, 26, 39, 40, 59, 60, 61, 62, 72, 73, 79, 80, 81, 170, 255, 255, 255]
    _write_label(_coco164k_label(root), raw)
    data = COCOStuff164k(root, "train")
    assert data.pairs[0][1] == _coco164k_label(root)
    np.testing.assert_array_equal(data.load(0)[1], _tiled(train))
    assert [COCOStuff164k.class_names[k] for k in (0, 11, 80, 170)] == ["person", "stop sign", "banner", "wood"]


def test_coco164k_train_id_files_are_read_as_they_are(tmp_path):
    root = write_fixture("coco_stuff164k", tmp_path, images=1)
    _write_label(_coco164k_label(root, "_labelTrainIds"), [0, 11, 170, 255])
    data = COCOStuff164k(root, "train2017")
    assert data.pairs[0][1] == _coco164k_label(root, "_labelTrainIds")
    np.testing.assert_array_equal(data.load(0)[1], _tiled([0, 11, 170, 255]))


@pytest.mark.parametrize("suffix, bad, valid", [("_labelTrainIds", 171, r"0\.\.170 and 255"),
                                                ("", 182, r"0\.\.181")])
def test_coco164k_label_out_of_range_names_file_id_and_range(tmp_path, suffix, bad, valid):
    root = write_fixture("coco_stuff164k", tmp_path, images=1)
    _coco164k_label(root, "_labelTrainIds").unlink()
    _write_label(_coco164k_label(root, suffix), [1, bad])
    with pytest.raises(ValueError, match=rf"000000000001{suffix}\.png: label id {bad} is out of range.*{valid}"):
        COCOStuff164k(root, "train").load(0)


# ---------------------------------------------------------------- COCO-Stuff-10k

def test_coco10k_image_list_selects_and_orders_images(tmp_path):
    root = write_fixture("coco_stuff10k", tmp_path, images=3)
    stems = [f"COCO_train2014_{i:012d}" for i in (3, 1)]
    (root / "imageLists" / "train.txt").write_text("\n".join(stems) + "\n\n")
    data = COCOStuff10k(root, "train")
    assert [image.stem for image, _ in data.pairs] == stems
    assert data.pairs[0][1] == root / "annotations" / "train2014" / f"{stems[0]}_labelTrainIds.png"
    assert [image.stem for image, _ in COCOStuff10k(root, "val").pairs] == \
        [f"COCO_test2014_{i:012d}" for i in (1, 2, 3)]


def test_coco10k_listed_stem_without_image_names_list_and_file(tmp_path):
    root = write_fixture("coco_stuff10k", tmp_path, images=1)
    (root / "imageLists" / "test.txt").write_text("COCO_test2014_000000000001\nCOCO_test2014_000000000999\n")
    with pytest.raises(FileNotFoundError, match=r"imageLists/test\.txt lists COCO_test2014_000000000999"):
        COCOStuff10k(root, "test")


def test_coco10k_without_image_lists_reads_the_folder(tmp_path):
    root = write_fixture("coco_stuff10k", tmp_path, images=2)
    (root / "imageLists" / "train.txt").unlink()
    assert len(COCOStuff10k(root, "train")) == 2


def test_coco10k_reduce_zero_label_and_range(tmp_path):
    root = write_fixture("coco_stuff10k", tmp_path, images=1)
    label = root / "annotations" / "train2014" / "COCO_train2014_000000000001_labelTrainIds.png"
    _write_label(label, [0, 1, 81, 171, 255])
    np.testing.assert_array_equal(COCOStuff10k(root, "train").load(0)[1], _tiled([255, 0, 80, 170, 255]))
    _write_label(label, [1, 172])
    with pytest.raises(ValueError, match=rf"{label.name}: label id 172 is out of range.*0\.\.171"):
        COCOStuff10k(root, "train").load(0)
