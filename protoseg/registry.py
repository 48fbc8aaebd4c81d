"""The names a run spec may use, importable without torch (the harness
validates whole sweeps with them before anything is built)."""
from __future__ import annotations

# name -> (timm model name, out_indices of the stride 4..32 stages, extra kwargs, dilatable)
BACKBONES: dict[str, tuple[str, tuple[int, ...], dict, bool]] = {
    "resnet18": ("resnet18", (1, 2, 3, 4), {}, True),
    "resnet50": ("resnet50", (1, 2, 3, 4), {}, True),
    "resnet101": ("resnet101", (1, 2, 3, 4), {}, True),
    # feature_location='' gives the raw HRNet branches (W48: 48+96+192+384 = 720), as the official code
    "hrnet_w18_small": ("hrnet_w18_small", (1, 2, 3, 4), {"feature_location": ""}, False),
    "hrnet_w48": ("hrnet_w48", (1, 2, 3, 4), {"feature_location": ""}, False),
    "convnext_tiny": ("convnext_tiny", (0, 1, 2, 3), {}, False),
    "convnext_small": ("convnext_small", (0, 1, 2, 3), {}, False),
    "convnext_base": ("convnext_base", (0, 1, 2, 3), {}, False),
    "tf_efficientnet_lite0": ("tf_efficientnet_lite0", (1, 2, 3, 4), {}, False),
}

# name -> "module:class" of its SegDataset
DATASETS: dict[str, str] = {
    "synthetic": "protoseg.data.synthetic:SyntheticScenes",
    "camvid": "protoseg.data.camvid:CamVid",
}

# K of the datasets whose class list is fixed (synthetic: data.synthetic.num_classes)
NUM_CLASSES: dict[str, int] = {"camvid": 11}
# datasets read from data.root
NEEDS_ROOT = ("camvid",)
