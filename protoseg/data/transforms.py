"""Train and eval transforms: numpy uint8 RGB image + label -> normalised tensors.

The train transform follows mmseg's pipeline (RandomResize with a ratio range,
RandomCrop, RandomFlip, PhotoMetricDistortion, Normalize, Pad) but draws every
random number from the `rng` it is given, so one (index, seed) is one sample.
As in mmseg, padding comes after normalisation: padded pixels are 0 in
normalised space (the mean colour) and 255 (ignore) in the label.
"""
from __future__ import annotations

import mmcv
import numpy as np
import torch

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
IGNORE_INDEX = 255


def random_resize(image, label, rng: np.random.Generator, ratio_range):
    ratio = rng.uniform(*ratio_range)
    return (mmcv.imrescale(image, ratio, interpolation="bilinear"),
            mmcv.imrescale(label, ratio, interpolation="nearest"))


def random_crop(image, label, rng: np.random.Generator, crop_size):
    """A random window of crop_size, or the whole side where the image is smaller."""
    ch, cw = crop_size
    h, w = label.shape
    top = rng.integers(0, max(h - ch, 0) + 1)
    left = rng.integers(0, max(w - cw, 0) + 1)
    return image[top:top + ch, left:left + cw], label[top:top + ch, left:left + cw]


def pad_to(image, label, size):
    """Pad bottom / right to size: image with 0, label with 255."""
    if label.shape == tuple(size):
        return image, label
    return (mmcv.impad(image, shape=tuple(size), pad_val=0),
            mmcv.impad(label, shape=tuple(size), pad_val=IGNORE_INDEX))


def random_flip(image, label, rng: np.random.Generator):
    if rng.random() < 0.5:
        return mmcv.imflip(image, "horizontal"), mmcv.imflip(label, "horizontal")
    return image, label


def photometric_distortion(image, rng: np.random.Generator, brightness_delta=32,
                           contrast_range=(0.5, 1.5), saturation_range=(0.5, 1.5), hue_delta=18):
    """mmseg's PhotoMetricDistortion: each step applied with p=0.5, contrast before or after HSV."""
    def clip(img, alpha=1.0, beta=0.0):
        return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    def contrast(img):
        return clip(img, alpha=rng.uniform(*contrast_range)) if rng.random() < 0.5 else img

    if rng.random() < 0.5:
        image = clip(image, beta=rng.uniform(-brightness_delta, brightness_delta))
    contrast_first = rng.random() < 0.5
    if contrast_first:
        image = contrast(image)
    if rng.random() < 0.5:
        hsv = mmcv.imconvert(image, "rgb", "hsv")
        hsv[..., 1] = clip(hsv[..., 1], alpha=rng.uniform(*saturation_range))
        image = mmcv.imconvert(hsv, "hsv", "rgb")
    if rng.random() < 0.5:
        hsv = mmcv.imconvert(image, "rgb", "hsv")
        # OpenCV's uint8 hue lives in [0, 180)
        hsv[..., 0] = (hsv[..., 0].astype(int) + rng.integers(-hue_delta, hue_delta + 1)) % 180
        image = mmcv.imconvert(hsv, "hsv", "rgb")
    if not contrast_first:
        image = contrast(image)
    return image


def normalize(image, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """uint8 HxWx3 RGB -> float32 HxWx3 (image - mean) / std, per RGB channel on the 0..255 scale."""
    return mmcv.imnormalize(image, np.asarray(mean, np.float32), np.asarray(std, np.float32), to_rgb=False)


def to_tensors(image, label):
    """float32 HxWx3 -> [3,H,W]; label -> int64 [H,W]."""
    return (torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64)))


def train_transform(image, label, rng: np.random.Generator, crop_size=(128, 128),
                    ratio_range=(0.5, 2.0), flip=True, photometric=True, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    image, label = random_resize(image, label, rng, ratio_range)
    image, label = random_crop(image, label, rng, crop_size)
    if flip:
        image, label = random_flip(image, label, rng)
    if photometric:
        image = photometric_distortion(image, rng)
    return to_tensors(*pad_to(normalize(image, mean, std), label, crop_size))


def eval_transform(image, label, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    return to_tensors(normalize(image, mean, std), label)
