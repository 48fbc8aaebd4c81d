"""Encoder -> decoder -> head, as segmentation_models.pytorch splits them."""
from __future__ import annotations

import torch
import torch.nn as nn

from .backbones import build_backbone
from .decoders import build_decoder
from .heads import build_head


class Segmentor(nn.Module):
    def __init__(self, model_cfg: dict, num_classes: int):
        super().__init__()
        self.backbone = build_backbone(model_cfg)
        self.decoder = build_decoder(model_cfg, self.backbone.channels)
        self.head = build_head(model_cfg, self.decoder.out_channels, num_classes)
        self.num_classes = num_classes

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None, winners: bool = False) -> dict:
        """Returns {'seg': (B, K, H/4, W/4) logits} and, given labels in
        training, the prototype head's 'proto_logits' and 'proto_target';
        with `winners`, the prototype head's nearest prototype per class."""
        return self.head(self.decoder(self.backbone(images)), labels, winners)


def build_model(model_cfg: dict, num_classes: int) -> Segmentor:
    return Segmentor(model_cfg, num_classes)
