"""The names a run spec may use, importable without torch (the harness
validates whole sweeps with them before anything is built)."""
from __future__ import annotations

# name -> (builder "module:function", the model's name for that builder, the builder's options)
_TIMM = "protoseg.models.backbones:build_timm"
BACKBONES: dict[str, tuple[str, str, dict]] = {
    "resnet18": (_TIMM, "resnet18", {"out_indices": (1, 2, 3, 4), "dilatable": True}),
    "resnet50": (_TIMM, "resnet50", {"out_indices": (1, 2, 3, 4), "dilatable": True}),
    "resnet101": (_TIMM, "resnet101", {"out_indices": (1, 2, 3, 4), "dilatable": True}),
    # mmseg's ResNetV1c (deep stem 3x3 convs 32-32-64), the FCN / DeepLab baselines' backbone
    "resnet101c": (_TIMM, "resnet101c", {"out_indices": (1, 2, 3, 4), "dilatable": True}),
    # feature_location='' gives the raw HRNet branches (W48: 48+96+192+384 = 720), as the official code
    "hrnet_w18_small": (_TIMM, "hrnet_w18_small", {"out_indices": (1, 2, 3, 4), "feature_location": ""}),
    "hrnet_w48": (_TIMM, "hrnet_w48", {"out_indices": (1, 2, 3, 4), "feature_location": ""}),
    "convnext_tiny": (_TIMM, "convnext_tiny", {"out_indices": (0, 1, 2, 3)}),
    "convnext_small": (_TIMM, "convnext_small", {"out_indices": (0, 1, 2, 3)}),
    "convnext_base": (_TIMM, "convnext_base", {"out_indices": (0, 1, 2, 3)}),
    "tf_efficientnet_lite0": (_TIMM, "tf_efficientnet_lite0", {"out_indices": (1, 2, 3, 4)}),
    "swin_base": ("protoseg.models.swin:build", "swin_base_patch4_window7_224", {}),
    "mit_b0": ("protoseg.models.mit:build", "mit_b0", {}),
    "mit_b4": ("protoseg.models.mit:build", "mit_b4", {}),
}

# name -> "module:class" of its SegDataset
DATASETS: dict[str, str] = {
    "synthetic": "protoseg.data.synthetic:SyntheticScenes",
    "camvid": "protoseg.data.camvid:CamVid",
    "ade20k": "protoseg.data.ade20k:ADE20K",
    "cityscapes": "protoseg.data.cityscapes:Cityscapes",
    "coco_stuff164k": "protoseg.data.cocostuff:COCOStuff164k",
    "coco_stuff10k": "protoseg.data.cocostuff:COCOStuff10k",
}

# K of the datasets whose class list is fixed (synthetic: data.synthetic.num_classes)
NUM_CLASSES: dict[str, int] = {"camvid": 11, "ade20k": 150, "cityscapes": 19, "coco_stuff164k": 171,
                               "coco_stuff10k": 171}
# datasets read from data.root
NEEDS_ROOT = ("camvid", "ade20k", "cityscapes", "coco_stuff164k", "coco_stuff10k")
