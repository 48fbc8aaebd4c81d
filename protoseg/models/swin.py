"""Swin Transformer through timm, laid out as mmseg's SwinTransformer
backbone of the UperNet recipe: every stage an output, each followed by a
LayerNorm, any input whose sides are multiples of 32, shifted windows as
mmseg computes them."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._compat import prepare_torchvision
from .backbones import Backbone, check_output_stride, load_state, read_state

prepare_torchvision()
from timm.models.swin_transformer import (  # noqa: E402
    SwinTransformerBlock, checkpoint_filter_fn, window_partition, window_reverse)


class Swin(Backbone):
    def __init__(self, body: nn.Module):
        super().__init__(body, body.feature_info.channels(), body.feature_info.reduction())
        # mmseg's norm0..norm3: timm's features carry no norm (its final `norm` is
        # for the classifier), so these start fresh, as they do in mmseg
        self.norms = nn.ModuleList(nn.LayerNorm(c) for c in self.channels)

    def forward(self, x):
        return [norm(f.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()
                for norm, f in zip(self.norms, self.body(x))]


class PadThenShiftBlock(SwinTransformerBlock):
    """timm's block with mmseg's order: pad the map to whole windows, then
    shift. timm shifts first, so on a map whose sides are no multiple of the
    window (128 at a 512 crop) its mask lets shifted windows mix opposite
    borders of the image. Equal to timm's where no padding is needed."""

    def _attn(self, x):
        B, H, W, C = x.shape
        wh, ww = self.window_size
        x = F.pad(x, (0, 0, 0, (ww - W % ww) % ww, 0, (wh - H % wh) % wh))
        shifted = torch.roll(x, shifts=(-self.shift_size[0], -self.shift_size[1]), dims=(1, 2))
        windows = window_partition(shifted, self.window_size).view(-1, self.window_area, C)
        windows = self.attn(windows, mask=self.get_attn_mask(shifted)).view(-1, wh, ww, C)
        x = torch.roll(window_reverse(windows, self.window_size, x.shape[1], x.shape[2]),
                       shifts=self.shift_size, dims=(1, 2))
        return x[:, :H, :W, :].contiguous()


def build(timm_name: str, model_cfg: dict, weights: Path | None) -> Swin:
    check_output_stride(model_cfg)
    import timm

    # strict_img_size=False: attention masks built per input size. always_partition:
    # window 7 and shift 3 in every stage at every size, as mmseg; timm would drop the
    # shift of a stage whose map at img_size fits one window (the last one at 224)
    body = timm.create_model(timm_name, features_only=True, feature_cls="getter", out_indices=(0, 1, 2, 3),
                             strict_img_size=False, always_partition=True,
                             drop_path_rate=model_cfg["drop_path"])
    for block in body.model.modules():
        if isinstance(block, SwinTransformerBlock):
            block.__class__ = PadThenShiftBlock
    if weights:
        # timm's filter takes the official layout ({'model': ...}, downsample at the
        # end of a stage) and timm's own
        load_state(body.model, checkpoint_filter_fn(read_state(weights), body.model), weights, timm_name)
    return Swin(body)
