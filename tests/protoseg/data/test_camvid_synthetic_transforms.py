"""protoseg.data: synthetic scenes, transforms, the CamVid loader and build_dataset."""
from __future__ import annotations

import colorsys
from pathlib import Path

import mmcv
import numpy as np
import pytest
import torch
from PIL import Image

from protoseg.config import resolve
from protoseg.data import DATASETS, build_dataset
from protoseg.data.camvid import CamVid
from protoseg.data.synthetic import SyntheticScenes
from protoseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, train_transform

from conftest import SHARED_DATA

CAMVID = SHARED_DATA / "camvid-240x180"
needs_camvid = pytest.mark.skipif(not CAMVID.is_dir(), reason=f"real CamVid not found at {CAMVID}")


# ---------------------------------------------------------------- synthetic scenes

def test_synthetic_same_seed_same_scenes_and_other_seed_differs():
    a, b, c = SyntheticScenes(seed=3), SyntheticScenes(seed=3), SyntheticScenes(seed=4)
    for i in range(3):
        for x, y in zip(a.scene(i), b.scene(i)):
            np.testing.assert_array_equal(x, y)
        assert not np.array_equal(a.load(i)[0], c.load(i)[0])


def test_synthetic_train_and_val_scenes_differ():
    train, val = SyntheticScenes("train"), SyntheticScenes("val")
    assert (len(train), len(val)) == (64, 16)
    for i in range(len(val)):
        assert not np.array_equal(train.load(i)[0], val.load(i)[0])


def test_synthetic_shapes_dtypes_and_label_range():
    data = SyntheticScenes(num_classes=5, modes_per_class=3, image_size=(96, 160), num_train=8)
    for i in range(len(data)):
        image, label = data.load(i)
        assert image.shape == (96, 160, 3) and image.dtype == np.uint8
        assert label.shape == (96, 160) and label.max() < 5
    assert data.class_names == [f"class{k}" for k in range(5)]


def test_synthetic_every_class_and_every_mode_appears():
    data = SyntheticScenes(num_classes=6, modes_per_class=3, num_train=32)
    seen = set()
    for i in range(len(data)):
        _, label, mode = data.scene(i)
        seen |= set(zip(label.ravel().tolist(), mode.ravel().tolist()))
    assert seen == {(k, m) for k in range(6) for m in range(3)}


def _mode_mean_colours(data):
    """{(class, mode): mean RGB of its pixels over the dataset}."""
    sums, counts = {}, {}
    for i in range(len(data)):
        image, label, mode = data.scene(i)
        for k in range(data.num_classes):
            for m in range(data.modes_per_class):
                mask = (label == k) & (mode == m)
                sums[k, m] = sums.get((k, m), 0) + image[mask].astype(np.float64).sum(0)
                counts[k, m] = counts.get((k, m), 0) + mask.sum()
    return {key: sums[key] / counts[key] for key in sums}


def test_synthetic_modes_of_a_class_look_different_and_interleave_across_classes():
    data = SyntheticScenes(num_classes=4, modes_per_class=2, num_train=32)
    means = _mode_mean_colours(data)
    for k in range(4):
        assert np.linalg.norm(means[k, 0] - means[k, 1]) > 60, f"class {k} modes look alike"

    def hue(rgb):
        return colorsys.rgb_to_hsv(*(rgb / 255))[0]

    # class 0 mode 0 and class 2 mode 1 share a colour (and vice versa): colour alone,
    # and so one mean appearance per class, cannot separate class 0 from class 2
    assert abs(hue(means[0, 0]) - hue(means[2, 1])) < 0.03
    assert abs(hue(means[0, 1]) - hue(means[2, 0])) < 0.03
    assert abs(hue(means[0, 0]) - hue(means[2, 0])) > 0.3


def test_synthetic_rejects_bad_split_and_index():
    with pytest.raises(ValueError, match="'test'.*train, val"):
        SyntheticScenes("test")
    with pytest.raises(IndexError, match="out of range"):
        SyntheticScenes(num_train=4).load(4)


# ---------------------------------------------------------------- transforms

def _asymmetric(h=20, w=30):
    """An image and label whose left and right halves differ."""
    image = np.zeros((h, w, 3), np.uint8)
    image[:, : w // 3] = (250, 10, 10)
    image[:, w // 3:] = np.arange(w - w // 3, dtype=np.uint8)[None, :, None] * 3
    label = np.zeros((h, w), np.uint8)
    label[:, : w // 3] = 1
    label[:, -2:] = 2
    return image, label


def test_train_transform_outputs_crop_size_for_small_and_large_images():
    data = SyntheticScenes(image_size=(64, 96), num_train=4, crop_size=(48, 80))
    for seed in range(10):
        image, label = data[(seed % 4, seed)]
        assert image.shape == (3, 48, 80) and image.dtype == torch.float32
        assert label.shape == (48, 80) and label.dtype == torch.int64
        assert set(label.unique().tolist()) <= {0, 1, 2, 3, 255}


def test_train_transform_is_a_function_of_index_and_seed():
    data = SyntheticScenes(num_train=4)
    x1, y1 = data[(2, 7)]
    np.random.seed(123)  # global RNG state must not matter
    x2, y2 = data[(2, 7)]
    x3, y3 = data[(2, 8)]
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, x3)


def test_random_resize_scales_image_and_label_by_the_ratio():
    image, label = _asymmetric(20, 30)
    _, out = train_transform(image, label, np.random.default_rng(0), crop_size=(100, 100),
                             ratio_range=(2.0, 2.0), flip=False, photometric=False)
    assert (out != 255).sum() == 40 * 60
    assert (out[:40, :60] != 255).all()


def test_resized_label_keeps_only_its_own_ids():
    label = np.zeros((20, 30), np.uint8)
    label[:, 15:] = 3
    label[5:9] = 255
    for seed in range(5):
        _, out = train_transform(np.zeros((20, 30, 3), np.uint8), label, np.random.default_rng(seed),
                                 crop_size=(40, 60), ratio_range=(0.7, 1.9), flip=False, photometric=False)
        assert set(out.unique().tolist()) == {0, 3, 255}


def test_padding_fills_label_with_255_and_image_with_normalised_zero():
    image, label = _asymmetric(20, 30)
    x, y = train_transform(image, label, np.random.default_rng(0), crop_size=(32, 40),
                           ratio_range=(1.0, 1.0), flip=False, photometric=False)
    assert (y[20:] == 255).all() and (y[:, 30:] == 255).all()
    assert (x[:, 20:] == 0).all() and (x[:, :, 30:] == 0).all()
    np.testing.assert_array_equal(y[:20, :30].numpy(), label)


def test_flip_really_mirrors_image_and_label():
    image, label = _asymmetric()
    ref_x, ref_y = eval_transform(image, label)
    outcomes = set()
    for seed in range(20):
        x, y = train_transform(image, label, np.random.default_rng(seed), crop_size=(20, 30),
                               ratio_range=(1.0, 1.0), flip=True, photometric=False)
        if torch.equal(y, ref_y):
            assert torch.equal(x, ref_x)
            outcomes.add("kept")
        else:
            assert torch.equal(y, ref_y.flip(-1)) and torch.allclose(x, ref_x.flip(-1))
            outcomes.add("flipped")
    assert outcomes == {"kept", "flipped"}


def test_photometric_changes_the_image_only():
    image, label = _asymmetric()
    ref_x, ref_y = eval_transform(image, label)
    changed = 0
    for seed in range(10):
        x, y = train_transform(image, label, np.random.default_rng(seed), crop_size=(20, 30),
                               ratio_range=(1.0, 1.0), flip=False, photometric=True)
        assert torch.equal(y, ref_y)
        changed += not torch.equal(x, ref_x)
    assert changed > 5


def test_eval_transform_normalises_with_imagenet_mean_and_std():
    image, label = _asymmetric()
    x, y = eval_transform(image, label)
    assert x.shape == (3, 20, 30) and y.dtype == torch.int64
    expected = (image[0, 0].astype(np.float32) - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(x[:, 0, 0].numpy(), expected, rtol=1e-6)


def test_data_mean_and_std_reach_train_and_eval_samples():
    """TF-ported EfficientNet-Lite weights were trained on (x - 127) / 128; data.mean / data.std carry that."""
    spec = resolve({"data": {"mean": [127, 127, 127], "std": [128, 128, 128], "photometric": False,
                                    "flip": False, "ratio_range": [1.0, 1.0]}})
    data = SyntheticScenes.from_config(spec["data"], "train")
    image, _ = data.load(0)
    for x, _ in (data[0], data[(0, 3)]):
        top_left = x[:, 0, 0].numpy()
        np.testing.assert_allclose(top_left, (image[0, 0].astype(np.float32) - 127) / 128, rtol=1e-6)


def test_int_index_gives_the_eval_sample():
    data = SyntheticScenes(num_train=2)
    x, y = data[1]
    assert x.shape == (3, 128, 128)
    np.testing.assert_array_equal(y.numpy(), data.load(1)[1])


def test_dataloader_with_index_seed_pairs_collates_batches():
    data = SyntheticScenes(num_train=4, crop_size=(64, 64))
    loader = torch.utils.data.DataLoader(data, batch_size=2, sampler=[(i, 100 + i) for i in range(4)])
    images, labels = next(iter(loader))
    assert images.shape == (2, 3, 64, 64) and labels.shape == (2, 64, 64)


# ---------------------------------------------------------------- build_dataset

def test_build_dataset_synthetic_from_resolved_defaults():
    cfg = resolve({"data": {"synthetic": {"num_train": 5, "num_val": 3}}})["data"]
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert (len(train), len(val), train.num_classes) == (5, 3, 4)
    assert train[(0, 0)][0].shape == (3, 128, 128)


def test_build_dataset_without_augmentation_gives_the_eval_sample():
    cfg = resolve({"data": {"crop_size": [128, 128], "ratio_range": [1.0, 1.0], "flip": False,
                            "photometric": False, "synthetic": {"num_train": 2}}})["data"]
    data = build_dataset(cfg, "train")
    for seed in range(5):
        x, y = data[(1, seed)]
        assert torch.equal(x, data[1][0]) and torch.equal(y, data[1][1])


def test_build_dataset_unknown_name_names_the_key_and_valid_names():
    cfg = resolve({})["data"] | {"dataset": "kitti"}
    with pytest.raises(ValueError, match="data.dataset") as err:
        build_dataset(cfg, "train")
    assert all(name in str(err.value) for name in DATASETS)


# ---------------------------------------------------------------- CamVid, real data

@needs_camvid
def test_camvid_real_counts_shapes_and_label_ids():
    cfg = resolve({"data": {"dataset": "camvid", "root": str(CAMVID)}})["data"]
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert (len(train), len(val), train.num_classes) == (367, 101, 11)
    for data in (train, val):
        for i in (0, len(data) - 1):
            image, label = data.load(i)
            assert image.shape == (180, 240, 3) and label.shape == (180, 240)
            assert set(np.unique(label).tolist()) <= set(range(11)) | {255}


@needs_camvid
def test_camvid_real_void_becomes_255():
    data = CamVid(CAMVID, "train")
    for image_path, label_path in data.pairs:
        raw = mmcv.imread(str(label_path), flag="unchanged")
        if (raw == 11).any():
            break
    _, label = data.load(data.pairs.index((image_path, label_path)))
    np.testing.assert_array_equal(label == 255, raw == 11)
    np.testing.assert_array_equal(label[raw != 11], raw[raw != 11])


# ---------------------------------------------------------------- CamVid, tmp copies

def _write_camvid(root: Path, split="train", stems=("a", "b"), suffix=".png", label_value=3):
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / f"{split}annot").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for stem in stems:
        mmcv.imwrite(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8), str(root / split / f"{stem}{suffix}"))
        label = np.full((12, 16), label_value, np.uint8)
        label[0] = 11
        mmcv.imwrite(label, str(root / f"{split}annot" / f"{stem}.png"))


def test_camvid_without_list_file_pairs_by_stem(tmp_path):
    _write_camvid(tmp_path, stems=("b", "a"), suffix=".jpg")
    mmcv.imwrite(np.zeros((12, 16), np.uint8), str(tmp_path / "trainannot" / "unused.png"))
    data = CamVid(tmp_path, "train")
    assert [(i.name, l.name) for i, l in data.pairs] == [("a.jpg", "a.png"), ("b.jpg", "b.png")]
    image, label = data.load(0)
    assert image.shape == (12, 16, 3)
    assert (label[0] == 255).all() and (label[1:] == 3).all()


def test_camvid_root_takes_environment_variables(tmp_path, monkeypatch):
    _write_camvid(tmp_path / "camvid", stems=("a",))
    data_cfg = resolve({"data": {"dataset": "camvid", "root": "${PROTOSEG_TEST_ROOT:-/no/such/folder}"}})["data"]
    monkeypatch.setenv("PROTOSEG_TEST_ROOT", str(tmp_path / "camvid"))
    assert CamVid.from_config(data_cfg, "train").root == tmp_path / "camvid"
    monkeypatch.delenv("PROTOSEG_TEST_ROOT")
    with pytest.raises(FileNotFoundError, match="/no/such/folder"):
        CamVid.from_config(data_cfg, "train")
    data_cfg["root"] = "${PROTOSEG_TEST_ROOT}/camvid"
    with pytest.raises(FileNotFoundError, match=r"\$\{PROTOSEG_TEST_ROOT\}, which is not set"):
        CamVid.from_config(data_cfg, "train")


def test_camvid_images_are_rgb(tmp_path):
    _write_camvid(tmp_path, stems=("a",))
    red = np.zeros((12, 16, 3), np.uint8)
    red[..., 0] = 255
    Image.fromarray(red).save(tmp_path / "train" / "a.png")
    image, _ = CamVid(tmp_path, "train").load(0)
    np.testing.assert_array_equal(image, red)


def test_camvid_image_without_label_is_named(tmp_path):
    _write_camvid(tmp_path)
    (tmp_path / "trainannot" / "b.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"b\.png"):
        CamVid(tmp_path, "train")


def test_camvid_list_file_with_absolute_segnet_paths(tmp_path):
    _write_camvid(tmp_path, split="val")
    (tmp_path / "val.txt").write_text("/SegNet/CamVid/val/b.png /SegNet/CamVid/valannot/b.png\n")
    data = CamVid(tmp_path, "val")
    assert data.pairs == [(tmp_path / "val" / "b.png", tmp_path / "valannot" / "b.png")]


def test_camvid_corrupt_image_names_the_file(tmp_path):
    _write_camvid(tmp_path)
    (tmp_path / "train" / "a.png").write_bytes(b"this is not a png")
    with pytest.raises(ValueError, match=r"a\.png.*decode"):
        CamVid(tmp_path, "train").load(0)


def test_camvid_out_of_range_label_names_file_and_id(tmp_path):
    _write_camvid(tmp_path, label_value=12)
    with pytest.raises(ValueError, match=r"a\.png.*12.*0\.\.10"):
        CamVid(tmp_path, "train").load(0)


def test_camvid_missing_root_names_path_and_key(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="data.root") as err:
        CamVid(missing, "train")
    assert str(missing) in str(err.value)


def test_camvid_missing_split_folder_is_named(tmp_path):
    _write_camvid(tmp_path, split="train")
    with pytest.raises(FileNotFoundError) as err:
        CamVid(tmp_path, "val")
    assert str(tmp_path / "val") in str(err.value)
