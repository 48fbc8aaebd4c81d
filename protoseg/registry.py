"""The names a run spec may use, as typed records, importable without torch (the harness
validates whole sweeps with them before anything is built). Builders are named as
"module:attribute" and imported only when a model or dataset is built."""
from __future__ import annotations

from typing import Any, Callable, NamedTuple


class BackboneEntry(NamedTuple):
    builder: str          # "module:function" (variant, model_cfg, weights) -> Backbone
    variant: str          # the model's name for that builder
    options: dict = {}    # the builder's keyword options


class Option(NamedTuple):
    """A setting of one decoder: the spec field model.decoder_options.<decoder>.<name> (protoseg.config)."""
    default: Any
    doc: str = ""
    check: tuple[Callable, str] | None = None  # beyond the default's type: (check, text of what is valid)
    any_length: bool = False                    # a list of any non-empty length


class DecoderEntry(NamedTuple):
    builder: str          # "module:class" (in_channels, channels, dropout, **options) -> decoder
    options: dict = {}    # {name: Option}: its own keyword settings


class DatasetEntry(NamedTuple):
    builder: str             # "module:class" of its SegDataset
    num_classes: int | None  # K when the class list is fixed (synthetic: data.synthetic.num_classes)
    needs_root: bool         # read from data.root
    fixture: str | None = None  # "module:function" (root, split, count, rng, size) writing a tiny copy of its layout


_TIMM = "protoseg.models.backbones:build_timm"
_RESNET = {"out_indices": (1, 2, 3, 4), "dilatable": True}
BACKBONES: dict[str, BackboneEntry] = {
    "resnet18": BackboneEntry(_TIMM, "resnet18", _RESNET),
    "resnet50": BackboneEntry(_TIMM, "resnet50", _RESNET),
    "resnet101": BackboneEntry(_TIMM, "resnet101", _RESNET),
    # mmseg's ResNetV1c (deep stem 3x3 convs 32-32-64), the FCN / DeepLab baselines' backbone
    "resnet101c": BackboneEntry(_TIMM, "resnet101c", _RESNET),
    # feature_location='' gives the raw HRNet branches (W48: 48+96+192+384 = 720), as the official code
    "hrnet_w18_small": BackboneEntry(_TIMM, "hrnet_w18_small", {"out_indices": (1, 2, 3, 4), "feature_location": ""}),
    "hrnet_w48": BackboneEntry(_TIMM, "hrnet_w48", {"out_indices": (1, 2, 3, 4), "feature_location": ""}),
    "convnext_tiny": BackboneEntry(_TIMM, "convnext_tiny", {"out_indices": (0, 1, 2, 3)}),
    "convnext_small": BackboneEntry(_TIMM, "convnext_small", {"out_indices": (0, 1, 2, 3)}),
    "convnext_base": BackboneEntry(_TIMM, "convnext_base", {"out_indices": (0, 1, 2, 3)}),
    "tf_efficientnet_lite0": BackboneEntry(_TIMM, "tf_efficientnet_lite0", {"out_indices": (1, 2, 3, 4)}),
    "swin_base": BackboneEntry("protoseg.models.swin:build", "swin_base_patch4_window7_224"),
    "mit_b0": BackboneEntry("protoseg.models.mit:build", "mit_b0"),
    "mit_b4": BackboneEntry("protoseg.models.mit:build", "mit_b4"),
}

_DECODERS = "protoseg.models.decoders"
DECODERS: dict[str, DecoderEntry] = {
    "hrnet": DecoderEntry(f"{_DECODERS}:HRNetDecoder"),
    "fcn": DecoderEntry(f"{_DECODERS}:FCNDecoder"),
    "upernet": DecoderEntry(f"{_DECODERS}:UPerNetDecoder", {"pool_scales": Option(
        [1, 2, 3, 6], "the pyramid pooling module's output sizes (mmseg's UPerHead)",
        ((lambda v: all(type(x) is int and 1 <= x <= 64 for x in v)), "a non-empty list of integers in [1, 64]"),
        any_length=True)}),
    "segformer": DecoderEntry(f"{_DECODERS}:SegFormerDecoder"),
}

HEADS = {"parametric": "protoseg.models.heads:ParametricHead",
         "nonparametric": "protoseg.models.heads:PrototypeHead"}
OPTIMIZERS = ("sgd", "adamw")

_FIXTURES = "protoseg.data.fixtures"
DATASETS: dict[str, DatasetEntry] = {
    "synthetic": DatasetEntry("protoseg.data.synthetic:SyntheticScenes", None, False),
    "camvid": DatasetEntry("protoseg.data.camvid:CamVid", 11, True, f"{_FIXTURES}:camvid"),
    "ade20k": DatasetEntry("protoseg.data.ade20k:ADE20K", 150, True, f"{_FIXTURES}:ade20k"),
    "cityscapes": DatasetEntry("protoseg.data.cityscapes:Cityscapes", 19, True, f"{_FIXTURES}:cityscapes"),
    "coco_stuff164k": DatasetEntry("protoseg.data.cocostuff:COCOStuff164k", 171, True, f"{_FIXTURES}:coco_stuff164k"),
    "coco_stuff10k": DatasetEntry("protoseg.data.cocostuff:COCOStuff10k", 171, True, f"{_FIXTURES}:coco_stuff10k"),
}
NEEDS_ROOT = tuple(name for name, entry in DATASETS.items() if entry.needs_root)


def load(reference: str):
    """The object a "module:attribute" reference names (importing its module)."""
    import importlib

    module, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module), attribute)
