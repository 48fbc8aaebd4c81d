"""Encoder -> decoder -> head, as segmentation_models.pytorch splits them."""
from __future__ import annotations

import torch
import torch.nn as nn

from .backbones import build_backbone
from .decoders import FCNDecoder, build_decoder
from .heads import build_head


class AuxHead(nn.Module):
    """mmseg's auxiliary FCNHead (stage 3, 256 channels, one 3x3 conv, no
    concat) with its own 1x1 classifier. Training only: complexity counts
    leave out modules marked `training_only`."""

    training_only = True

    def __init__(self, in_channels: list[int], num_classes: int, dropout: float):
        super().__init__()
        self.fcn = FCNDecoder(in_channels, 256, dropout, in_index=2, num_convs=1, concat_input=False)
        self.classifier = nn.Conv2d(256, num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.fcn(feats))


class Segmentor(nn.Module):
    def __init__(self, model_cfg: dict, num_classes: int):
        super().__init__()
        self.backbone = build_backbone(model_cfg)
        self.decoder = build_decoder(model_cfg, self.backbone.channels)
        self.head = build_head(model_cfg, self.decoder.out_channels, num_classes)
        self.aux_head = (AuxHead(self.backbone.channels, num_classes, model_cfg["dropout"])
                         if model_cfg["aux_head"] else None)
        self.num_classes = num_classes

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None, winners: bool = False) -> dict:
        """Returns {'seg': (B, K, h, w) logits at the decoder's stride} and, given labels in
        training, the prototype head's 'proto_logits' and 'proto_target' and the auxiliary
        head's 'aux_seg'; with `winners`, the prototype head's nearest prototype per class."""
        feats = self.backbone(images)
        out = self.head(self.decoder(feats), labels, winners)
        if self.aux_head is not None and labels is not None and self.training:
            out["aux_seg"] = self.aux_head(feats)
        return out


def build_model(model_cfg: dict, num_classes: int) -> Segmentor:
    return Segmentor(model_cfg, num_classes)
