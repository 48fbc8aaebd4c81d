"""Decoders: backbone stages -> one feature map at stride 4."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule


class HRNetDecoder(nn.Module):
    """The official decoder: every stage resized to the first stage's size,
    concatenated, then Conv3x3-BN-ReLU-Dropout2d."""

    def __init__(self, in_channels: list[int], channels: int | None = None, dropout: float = 0.1,
                 norm: str = "BN"):
        super().__init__()
        self.out_channels = channels or sum(in_channels)
        self.conv = ConvModule(sum(in_channels), self.out_channels, 3, padding=1,
                               norm_cfg=dict(type=norm, requires_grad=True))
        self.dropout = nn.Dropout2d(dropout)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        size = feats[0].shape[2:]
        ups = [feats[0]] + [F.interpolate(f, size=size, mode="bilinear", align_corners=True) for f in feats[1:]]
        return self.dropout(self.conv(torch.cat(ups, dim=1)))


DECODERS = {"hrnet": HRNetDecoder}


def build_decoder(model_cfg: dict, in_channels: list[int]) -> nn.Module:
    name = model_cfg["decoder"]
    if name not in DECODERS:
        raise ValueError(f"model.decoder is {name!r}; valid: {', '.join(DECODERS)}")
    return DECODERS[name](in_channels, model_cfg["decoder_channels"], model_cfg["dropout"], model_cfg["norm"])
