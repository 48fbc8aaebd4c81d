"""SegFormer's Mix Transformer (MiT) encoder through Hugging Face
transformers' SegformerModel (timm has none), built from its config; nothing
is downloaded.

Weight files load in the names of this transformers version, of the
Hugging Face hub (with or without 'segformer.'), of NVlabs' SegFormer
(patch_embed1, block1.0.attn.kv, norm1; also under mmseg's 'backbone.') or
of mmseg (layers.0.0.projection, layers.0.1.0.attn.attn.in_proj_weight).
"""
from __future__ import annotations

import re
from pathlib import Path

import torch.nn as nn

from .backbones import Backbone, check_output_stride, load_state, read_state

# name -> (hidden sizes, depths); heads, reduction ratios, patch sizes, strides and MLP ratio are common
VARIANTS = {
    "mit_b0": ([32, 64, 160, 256], [2, 2, 2, 2]),
    "mit_b4": ([64, 128, 320, 512], [3, 8, 27, 3]),
}


class MiT(Backbone):
    def forward(self, x):
        return list(self.body(pixel_values=x, output_hidden_states=True).hidden_states)


def build(variant: str, model_cfg: dict, weights: Path | None) -> MiT:
    check_output_stride(model_cfg)
    from transformers import SegformerConfig, SegformerModel

    hidden_sizes, depths = VARIANTS[variant]
    config = SegformerConfig(hidden_sizes=hidden_sizes, depths=depths, num_attention_heads=[1, 2, 5, 8],
                             sr_ratios=[8, 4, 2, 1], patch_sizes=[7, 3, 3, 3], strides=[4, 2, 2, 2],
                             mlp_ratios=[4, 4, 4, 4], drop_path_rate=model_cfg["drop_path"])
    body = SegformerModel(config)
    if weights:
        load_state(body, model_names(body, read_state(weights)), weights, variant)
    return MiT(body, hidden_sizes, [4, 8, 16, 32])


def model_names(model: nn.Module, state: dict) -> dict:
    """`state` in any of the layouts above, named as `model`'s tensors."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightRenaming, rename_source_key

    if any(k.startswith("layers.0.0.projection.") for k in state):
        state = mmseg_to_nvlabs(state)
    if any(k.startswith("patch_embed1.") for k in state):
        state = nvlabs_to_hub(state)
    # transformers' own renaming of hub checkpoints to this version's module names
    renamings = [t for t in get_model_conversion_mapping(model) if isinstance(t, WeightRenaming)]
    return {rename_source_key(k.removeprefix("segformer."), renamings, [])[0]: v for k, v in state.items()}


_NVLABS_TO_HUB = (("norm1.", "layer_norm_1."), ("norm2.", "layer_norm_2."), ("attn.q.", "attention.self.query."),
                  ("attn.proj.", "attention.output.dense."), ("attn.sr.", "attention.self.sr."),
                  ("attn.norm.", "attention.self.layer_norm."), ("mlp.fc1.", "mlp.dense1."),
                  ("mlp.fc2.", "mlp.dense2."), ("mlp.dwconv.", "mlp.dwconv."))


def nvlabs_to_hub(state: dict) -> dict:
    """NVlabs' names -> the hub's (encoder.patch_embeddings.0, encoder.block.0.0.attention.self.query,
    encoder.layer_norm.0), NVlabs' joint kv split into key and value. Keys of
    neither (a classifier 'head.*') keep their names."""
    out = {}
    for key, value in state.items():
        embed = re.fullmatch(r"patch_embed(\d)\.(.+)", key)
        norm = re.fullmatch(r"norm(\d)\.(.+)", key)
        block = re.fullmatch(r"block(\d)\.(\d+)\.(.+)", key)
        if embed:
            stage, rest = int(embed.group(1)) - 1, embed.group(2)
            out[f"encoder.patch_embeddings.{stage}.{rest.replace('norm.', 'layer_norm.')}"] = value
        elif norm:
            out[f"encoder.layer_norm.{int(norm.group(1)) - 1}.{norm.group(2)}"] = value
        elif block and block.group(3).startswith("attn.kv."):
            prefix = f"encoder.block.{int(block.group(1)) - 1}.{block.group(2)}.attention.self"
            param = block.group(3).removeprefix("attn.kv.")
            out[f"{prefix}.key.{param}"], out[f"{prefix}.value.{param}"] = value.chunk(2)
        elif block and (renamed := _rename(block.group(3), _NVLABS_TO_HUB)):
            out[f"encoder.block.{int(block.group(1)) - 1}.{block.group(2)}.{renamed}"] = value
        else:
            out[key] = value
    return out


_MMSEG_TO_NVLABS = (("norm1.", "norm1."), ("norm2.", "norm2."), ("attn.attn.out_proj.", "attn.proj."),
                    ("attn.sr.", "attn.sr."), ("attn.norm.", "attn.norm."), ("ffn.layers.0.", "mlp.fc1."),
                    ("ffn.layers.1.", "mlp.dwconv.dwconv."), ("ffn.layers.4.", "mlp.fc2."))


def mmseg_to_nvlabs(state: dict) -> dict:
    """mmseg's names -> NVlabs' (the inverse of mmseg's mit2mmseg): in_proj
    (q, k, v stacked) split into q and kv, the FFN's 1x1 convs as linears."""
    out = {}
    for key, value in state.items():
        embed = re.fullmatch(r"layers\.(\d)\.0\.(.+)", key)
        norm = re.fullmatch(r"layers\.(\d)\.2\.(.+)", key)
        block = re.fullmatch(r"layers\.(\d)\.1\.(\d+)\.(.+)", key)
        if embed:
            out[f"patch_embed{int(embed.group(1)) + 1}.{embed.group(2).replace('projection.', 'proj.')}"] = value
        elif norm:
            out[f"norm{int(norm.group(1)) + 1}.{norm.group(2)}"] = value
        elif block and block.group(3).startswith("attn.attn.in_proj_"):
            prefix = f"block{int(block.group(1)) + 1}.{block.group(2)}.attn"
            param, dim = block.group(3).removeprefix("attn.attn.in_proj_"), len(value) // 3
            out[f"{prefix}.q.{param}"], out[f"{prefix}.kv.{param}"] = value[:dim], value[dim:]
        elif block and (renamed := _rename(block.group(3), _MMSEG_TO_NVLABS)):
            if renamed in ("mlp.fc1.weight", "mlp.fc2.weight"):
                value = value.flatten(1)
            out[f"block{int(block.group(1)) + 1}.{block.group(2)}.{renamed}"] = value
        else:
            out[key] = value
    return out


def _rename(name: str, table) -> str | None:
    for old, new in table:
        if name.startswith(old):
            return new + name[len(old):]
    return None
