"""Decoders: the backbone's list of stage maps -> one D-channel map with
`.out_channels = D`, at the first stage's stride (fcn: its stage's stride).
Besides the official HRNet decoder, mmseg's FCNHead, UPerHead and
SegformerHead up to their classifier (the head, parametric or prototypes,
is separate).

Every norm is BatchNorm; `model.norm: SyncBN` converts the whole model's
when a run has several CUDA processes (protoseg.distributed.sync_batchnorm)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule

from ..registry import DECODERS, load


def _conv(cin: int, cout: int, kernel: int, **kw) -> ConvModule:
    return ConvModule(cin, cout, kernel, padding=kernel // 2, norm_cfg=dict(type="BN", requires_grad=True), **kw)


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)  # mmseg's setting


class HRNetDecoder(nn.Module):
    """The official decoder: every stage resized to the first stage's size,
    concatenated, then Conv3x3-BN-ReLU-Dropout2d (`kernel` 1: mmseg's
    FCNHead with kernel_size=1, whose size the paper's HRNet rows give)."""

    def __init__(self, in_channels: list[int], channels: int | None = None, dropout: float = 0.1,
                 kernel: int | None = None):
        super().__init__()
        self.out_channels = channels or sum(in_channels)
        self.conv = _conv(sum(in_channels), self.out_channels, kernel or 3)
        self.dropout = nn.Dropout2d(dropout)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        size = feats[0].shape[2:]
        ups = [feats[0]] + [F.interpolate(f, size=size, mode="bilinear", align_corners=True) for f in feats[1:]]
        return self.dropout(self.conv(torch.cat(ups, dim=1)))


class FCNDecoder(nn.Module):
    """mmseg FCNHead on one stage (the last by default): `num_convs` 3x3
    ConvModules; with `concat_input`, the input concatenated back and fused by
    a 3x3 ConvModule; then dropout. Its output keeps that stage's stride."""

    def __init__(self, in_channels: list[int], channels: int | None = None, dropout: float = 0.1,
                 in_index: int = -1, num_convs: int = 2, concat_input: bool = True):
        super().__init__()
        self.in_index = in_index
        self.out_channels = channels = channels or 512
        cin = in_channels[in_index]
        self.convs = nn.Sequential(*[_conv(cin if i == 0 else channels, channels, 3) for i in range(num_convs)])
        self.conv_cat = _conv(cin + channels, channels, 3) if concat_input else None
        self.dropout = nn.Dropout2d(dropout)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = feats[self.in_index]
        out = self.convs(x)
        if self.conv_cat is not None:
            out = self.conv_cat(torch.cat([x, out], dim=1))
        return self.dropout(out)


class UPerNetDecoder(nn.Module):
    """mmseg UPerHead: a pyramid pooling module on the last stage, lateral 1x1
    convs and a top-down FPN over the others, every level's 3x3 output (the
    PPM's as it is) resized to stride 4, concatenated, fused by a 3x3 conv."""

    def __init__(self, in_channels: list[int], channels: int | None = None, dropout: float = 0.1,
                 pool_scales: tuple[int, ...] = (1, 2, 3, 6)):
        super().__init__()
        self.out_channels = channels = channels or 512
        top = in_channels[-1]
        self.ppm = nn.ModuleList(nn.Sequential(nn.AdaptiveAvgPool2d(s), _conv(top, channels, 1))
                                 for s in pool_scales)
        self.bottleneck = _conv(top + len(pool_scales) * channels, channels, 3)
        # not in place: the laterals are summed into afterwards (as mmseg)
        self.lateral_convs = nn.ModuleList(_conv(c, channels, 1, inplace=False) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(_conv(channels, channels, 3, inplace=False) for _ in in_channels[:-1])
        self.fpn_bottleneck = _conv(len(in_channels) * channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        top = feats[-1]
        pooled = [_resize(branch(top), top.shape[2:]) for branch in self.ppm]
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats)]
        laterals.append(self.bottleneck(torch.cat([top, *pooled], dim=1)))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[2:])
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals)] + [laterals[-1]]
        size = outs[0].shape[2:]
        outs = [outs[0]] + [_resize(o, size) for o in outs[1:]]
        return self.dropout(self.fpn_bottleneck(torch.cat(outs, dim=1)))


class SegFormerDecoder(nn.Module):
    """mmseg SegformerHead (all-MLP): per stage a 1x1 ConvModule to `channels`,
    resized to stride 4, concatenated in stage order (mmseg's; NVlabs'
    original reverses it), fused by a 1x1 ConvModule, then dropout."""

    def __init__(self, in_channels: list[int], channels: int | None = None, dropout: float = 0.1):
        super().__init__()
        self.out_channels = channels = channels or 256
        self.convs = nn.ModuleList(_conv(c, channels, 1) for c in in_channels)
        self.fusion_conv = _conv(len(in_channels) * channels, channels, 1)
        self.dropout = nn.Dropout2d(dropout)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        size = feats[0].shape[2:]
        outs = [_resize(conv(f), size) for conv, f in zip(self.convs, feats)]
        return self.dropout(self.fusion_conv(torch.cat(outs, dim=1)))


def build_decoder(model_cfg: dict, in_channels: list[int]) -> nn.Module:
    """The decoder of `model.decoder`, given the common settings and its own (model.decoder_options.<name>)."""
    name = model_cfg["decoder"]
    if name not in DECODERS:
        raise ValueError(f"model.decoder is {name!r}; valid: {', '.join(DECODERS)}")
    options = {key: tuple(v) if isinstance(v, list) else v
               for key, v in model_cfg["decoder_options"].get(name, {}).items()}
    if model_cfg["decoder_kernel"] is not None:
        if name != "hrnet":
            raise ValueError(f"model.decoder_kernel is {model_cfg['decoder_kernel']} for decoder {name!r}; "
                             "it sets the hrnet decoder's fusion conv: valid for this decoder: null")
        options["kernel"] = model_cfg["decoder_kernel"]
    return load(DECODERS[name].builder)(in_channels, model_cfg["decoder_channels"], model_cfg["dropout"], **options)
