from .._compat import prepare_torchvision

prepare_torchvision()  # before anything below imports timm, torchvision or mmcv

from .backbones import BACKBONES, build_backbone  # noqa: E402
from .segmentor import Segmentor, build_model  # noqa: E402

__all__ = ["BACKBONES", "Segmentor", "build_backbone", "build_model"]
