"""The paper's transformer backbones (Swin-B through timm, MiT through
transformers) keep the features_only contract, and model.pretrained loads
the weight-key layouts researchers have: timm's, the official HRNet and Swin
checkpoints, NVlabs', mmseg's and Hugging Face's MiT."""
import logging
import re

import pytest
import torch

from protoseg import config
from protoseg.models import build_backbone
from protoseg.models import swin


def model_cfg(**kw):
    return config.resolve({"model": kw})["model"]


def n_params(module):
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def swin_b():
    return build_backbone(model_cfg(backbone="swin_base", drop_path=0.3)).eval()


@pytest.fixture(scope="module")
def mit_b4():
    return build_backbone(model_cfg(backbone="mit_b4", drop_path=0.3)).eval()


@pytest.mark.parametrize("fixture, channels", [("swin_b", [128, 256, 512, 1024]),
                                               ("mit_b4", [64, 128, 320, 512])])
def test_four_nchw_stages_at_strides_4_to_32_on_a_non_square_input(fixture, channels, request):
    backbone = request.getfixturevalue(fixture)
    with torch.no_grad():
        feats = backbone(torch.randn(2, 3, 96, 160))
    assert backbone.channels == channels and backbone.reductions == [4, 8, 16, 32]
    assert [tuple(f.shape) for f in feats] == [(2, c, 96 // s, 160 // s) for c, s in zip(channels, [4, 8, 16, 32])]


def test_mit_b0_is_the_small_variant():
    backbone = build_backbone(model_cfg(backbone="mit_b0"))
    assert backbone.channels == [32, 64, 160, 256]
    assert [f.shape[-1] for f in backbone(torch.zeros(1, 3, 64, 96))] == [24, 12, 6, 3]


def test_swin_stages_end_in_a_layernorm_as_mmseg(swin_b):
    """timm's features carry no norm; mmseg's norm0..norm3 follow each stage."""
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        raw, feats = swin_b.body(x), swin_b(x)
    for norm, r, f in zip(swin_b.norms, raw, feats):
        assert not torch.allclose(r, f, atol=1e-3)
        assert torch.allclose(f, norm(r.permute(0, 2, 3, 1)).permute(0, 3, 1, 2), atol=1e-6)
    assert {id(p) for p in swin_b.norms.parameters()} <= {id(p) for p in swin_b.parameters()}


@pytest.mark.parametrize("fixture", ["swin_b", "mit_b4"])
def test_drop_path_reaches_the_model(fixture, request):
    rates = [m.drop_prob for m in request.getfixturevalue(fixture).modules() if hasattr(m, "drop_prob")]
    assert max(rates) == pytest.approx(0.3)  # linear from 0 to model.drop_path over the blocks
    plain = build_backbone(model_cfg(backbone="mit_b0"))
    assert not any(getattr(m, "drop_prob", 0) for m in plain.modules())


def test_drop_path_on_a_backbone_without_stochastic_depth_is_an_error():
    with pytest.raises(ValueError, match="model.drop_path is 0.2 for hrnet_w18_small, which has no stochastic"):
        build_backbone(model_cfg(backbone="hrnet_w18_small", drop_path=0.2))


def test_parameter_counts_are_the_papers(swin_b, mit_b4):
    # Swin-B: timm's 87.77 M less head (1.025 M) and final norm, plus mmseg's four stage norms;
    # MiT-B4: SegFormer's Table 1 gives its encoder 60.8 M. Both are stated to 0.1 M.
    stage_norms = 2 * sum(swin_b.channels)
    assert abs(n_params(swin_b) - 86.7e6) < 0.05e6
    assert n_params(swin_b) - n_params(swin_b.body) == stage_norms == 3840
    assert abs(n_params(mit_b4) - 60.8e6) < 0.05e6


def test_swin_b_is_window_7_embed_128_depths_2_2_18_2(swin_b):
    layers = swin_b.body.model.layers
    assert [len(stage.blocks) for stage in layers] == [2, 2, 18, 2]
    assert [stage.blocks[0].attn.num_heads for stage in layers] == [4, 8, 16, 32]
    # always partitioned: window 7 and a shift of 3 in every stage, the last one too
    assert all(stage.blocks[1].window_size == (7, 7) and stage.blocks[1].shift_size == (3, 3) for stage in layers)


def test_shifted_windows_never_mix_opposite_borders_of_a_padded_map(swin_b):
    """mmseg pads a map to whole windows before the cyclic shift, so the mask
    keeps the wrapped-around top rows apart from the bottom ones; timm shifts
    first, and on a 16-row map (7-windows) its mask lets them mix."""
    block = swin_b.body.model.layers[0].blocks[1]
    assert block.shift_size == (3, 3)
    x = torch.randn(1, 16, 16, 128)
    moved = x.clone()
    moved[:, 0] += 1.0
    with torch.no_grad():
        a, b = block._attn(x), block._attn(moved)
    assert not torch.allclose(a[:, :3], b[:, :3])
    assert torch.allclose(a[:, 3:], b[:, 3:], atol=1e-6)


def test_shifted_windows_are_timms_where_no_padding_is_needed(swin_b):
    from timm.models.swin_transformer import SwinTransformerBlock

    block = swin_b.body.model.layers[1].blocks[1]
    x = torch.randn(2, 14, 21, 256)
    with torch.no_grad():
        assert torch.allclose(block._attn(x), SwinTransformerBlock._attn(block, x), atol=1e-6)


# --- weight layouts --------------------------------------------------------------------------

def randomised(state):
    """A state whose every tensor differs from a fresh model's (norms start at 1 and 0)."""
    return {k: v + torch.rand_like(v) + 0.5 if v.is_floating_point() else v + 1 for k, v in state.items()}


def assert_all_arrived(module, reference):
    state = module.state_dict()
    assert [k for k in reference if not torch.equal(state[k], reference[k])] == []


def write(tmp_path, name, state):
    torch.save(state, tmp_path / name)
    return tmp_path / name


def warnings_of(caplog):
    return " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


def test_official_hrnet_checkpoint_loads_and_its_head_is_reported(tmp_path, caplog):
    import timm

    # timm's hrnet keeps the official names (HRNet-Image-Classification's cls_hrnet.py), head included
    full = randomised(timm.create_model("hrnet_w18_small").state_dict())
    official = ["conv1.weight", "layer1.0.downsample.0.weight", "transition1.1.0.0.weight",
                "stage2.0.fuse_layers.1.0.0.0.weight", "stage4.0.branches.3.1.bn2.running_var",
                "incre_modules.0.0.conv1.weight", "downsamp_modules.2.0.bias", "final_layer.0.weight",
                "classifier.weight"]
    assert set(official) <= set(full)
    path = write(tmp_path, "hrnetv2_w18_small_v1.pth", full)
    with caplog.at_level(logging.WARNING):
        backbone = build_backbone(model_cfg(backbone="hrnet_w18_small", pretrained=str(path)))
    assert_all_arrived(backbone.body, {k: v for k, v in full.items() if k in backbone.body.state_dict()})
    message = warnings_of(caplog)
    assert "not in the file" not in message
    assert "126 of the file's tensors are unused (incre_modules.0.0.conv1.weight" in message


def test_timm_convnext_checkpoint_loads_into_its_flattened_features_body(tmp_path):
    import timm

    full = randomised(timm.create_model("convnext_tiny").state_dict())
    backbone = build_backbone(model_cfg(backbone="convnext_tiny", pretrained=str(write(tmp_path, "c.pth", full))))
    assert torch.equal(backbone.body.stem_0.weight, full["stem.0.weight"])
    assert torch.equal(backbone.body.stages_3.blocks[2].mlp.fc2.weight, full["stages.3.blocks.2.mlp.fc2.weight"])


def official_swin(state):
    """timm's Swin names -> microsoft/Swin-Transformer's: downsample at the end of a stage."""
    return {re.sub(r"layers\.(\d)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", k): v
            for k, v in state.items()}


def test_official_swin_checkpoint_loads(tmp_path, caplog):
    # the same code as swin_base, on Swin-T (the same layout, a third of the size)
    reference = randomised(swin.build("swin_tiny_patch4_window7_224", model_cfg(), None).body.model.state_dict())
    file = {**official_swin(reference), "norm.weight": torch.ones(768), "norm.bias": torch.zeros(768),
            "head.weight": torch.zeros(1000, 768), "head.bias": torch.zeros(1000),
            "layers.0.blocks.0.attn.relative_position_index": torch.zeros(49, 49, dtype=torch.long)}
    assert "layers.0.downsample.reduction.weight" in file and "layers.3.downsample.norm.weight" not in file
    path = tmp_path / "swin_tiny_patch4_window7_224.pth"
    torch.save({"model": file}, path)
    with caplog.at_level(logging.WARNING):
        backbone = swin.build("swin_tiny_patch4_window7_224", model_cfg(), path)
    assert_all_arrived(backbone.body.model, reference)
    assert "not in the file" not in warnings_of(caplog)
    assert "4 of the file's tensors are unused (norm.weight, norm.bias, head.fc.weight, head.fc.bias)" \
        in warnings_of(caplog)


def test_swin_checkpoint_missing_a_tensor_names_it(tmp_path, caplog):
    reference = swin.build("swin_tiny_patch4_window7_224", model_cfg(), None).body.model.state_dict()
    file = official_swin(reference)
    del file["layers.2.blocks.5.mlp.fc1.bias"]
    with caplog.at_level(logging.WARNING):
        swin.build("swin_tiny_patch4_window7_224", model_cfg(), write(tmp_path, "s.pth", file))
    assert "1 of the model's tensors are not in the file and keep their initialisation " \
           "(layers.2.blocks.5.mlp.fc1.bias)" in warnings_of(caplog)


# MiT: this transformers version's names -> the hub's -> NVlabs' -> mmseg's, written out here
# from the published converters (transformers' convert_segformer_original_to_pytorch.py, mmseg's mit2mmseg.py)
HUB = [(r"^stages\.(\d)\.patch_embeddings\.", r"encoder.patch_embeddings.\1."),
       (r"^stages\.(\d)\.blocks\.", r"encoder.block.\1."), (r"^stages\.(\d)\.layer_norm", r"encoder.layer_norm.\1"),
       (r"attention\.q_proj", "attention.self.query"), (r"attention\.k_proj", "attention.self.key"),
       (r"attention\.v_proj", "attention.self.value"), (r"attention\.o_proj", "attention.output.dense"),
       (r"attention\.sequence_reduction\.sequence_reduction", "attention.self.sr"),
       (r"attention\.sequence_reduction\.layer_norm", "attention.self.layer_norm"),
       (r"mlp\.fc1", "mlp.dense1"), (r"mlp\.fc2", "mlp.dense2"),
       (r"layernorm_before", "layer_norm_1"), (r"layernorm_after", "layer_norm_2")]
NVLABS = [(r"^encoder\.patch_embeddings\.(\d)\.layer_norm", lambda m: f"patch_embed{int(m[1]) + 1}.norm"),
          (r"^encoder\.patch_embeddings\.(\d)", lambda m: f"patch_embed{int(m[1]) + 1}"),
          (r"^encoder\.layer_norm\.(\d)", lambda m: f"norm{int(m[1]) + 1}"),
          (r"^encoder\.block\.(\d)", lambda m: f"block{int(m[1]) + 1}"),
          (r"attention\.self\.query", "attn.q"), (r"attention\.output\.dense", "attn.proj"),
          (r"attention\.self\.sr", "attn.sr"), (r"attention\.self\.layer_norm", "attn.norm"),
          (r"layer_norm_(\d)", r"norm\1"), (r"mlp\.dense(\d)", r"mlp.fc\1")]


def renamed(state, table):
    out = {}
    for key, value in state.items():
        for pattern, new in table:
            key = re.sub(pattern, new, key)
        out[key] = value
    return out


def hub_mit(state):
    return renamed(state, HUB)


def nvlabs_mit(state):
    out = renamed(hub_mit(state), NVLABS)
    for key in [k for k in out if ".attention.self.key." in k]:
        value_key = key.replace(".key.", ".value.")
        out[key.replace("attention.self.key", "attn.kv")] = torch.cat([out.pop(key), out.pop(value_key)])
    return out


def mmseg_mit(state):
    out = {}
    nvlabs = nvlabs_mit(state)
    for key, value in nvlabs.items():
        stage = int(re.match(r"\D+(\d)", key)[1]) - 1
        if key.startswith("patch_embed"):
            key = re.sub(r"^patch_embed\d\.", f"layers.{stage}.0.", key).replace(".proj.", ".projection.")
        elif key.startswith("norm"):
            key = re.sub(r"^norm\d\.", f"layers.{stage}.2.", key)
        elif ".attn.kv." in key:
            continue
        else:
            key = re.sub(r"^block\d\.", f"layers.{stage}.1.", key)
            if ".attn.q." in key:
                value = torch.cat([value, nvlabs[key.replace(f"layers.{stage}.1.", f"block{stage + 1}.")
                                                 .replace(".q.", ".kv.")]])
                key = key.replace(".attn.q.", ".attn.attn.in_proj_")
            key = key.replace(".attn.proj.", ".attn.attn.out_proj.")
            if ".mlp.fc" in key and key.endswith("weight"):
                value = value[:, :, None, None]
            key = key.replace(".mlp.fc1.", ".ffn.layers.0.").replace(".mlp.dwconv.dwconv.", ".ffn.layers.1.")
            key = key.replace(".mlp.fc2.", ".ffn.layers.4.")
        out[key] = value
    return out


@pytest.fixture(scope="module")
def mit_b0_reference():
    return randomised(build_backbone(model_cfg(backbone="mit_b0")).body.state_dict())


def test_the_written_layouts_have_the_published_names(mit_b0_reference):
    assert {"segformer.encoder.block.0.1.attention.self.key.weight", "segformer.encoder.layer_norm.3.bias",
            "segformer.encoder.patch_embeddings.2.proj.weight"} <= {"segformer." + k for k in
                                                                    hub_mit(mit_b0_reference)}
    assert {"patch_embed1.proj.weight", "patch_embed4.norm.bias", "block1.0.attn.q.weight", "block2.1.attn.kv.bias",
            "block3.0.attn.sr.weight", "block4.1.mlp.dwconv.dwconv.weight", "norm4.weight",
            "block4.1.norm2.bias"} <= set(nvlabs_mit(mit_b0_reference))
    assert {"layers.0.0.projection.weight", "layers.1.1.0.attn.attn.in_proj_weight",
            "layers.3.1.1.ffn.layers.4.weight", "layers.2.2.weight"} <= set(mmseg_mit(mit_b0_reference))


@pytest.mark.parametrize("layout, wrap", [
    ("hub", lambda s: {"segformer." + k: v for k, v in hub_mit(s).items()}),
    ("hub_base_model", hub_mit),
    ("nvlabs", nvlabs_mit),
    ("nvlabs_in_an_mmseg_segformer", lambda s: {"state_dict": {"backbone." + k: v for k, v in nvlabs_mit(s).items()}}),
    ("mmseg", mmseg_mit),
    ("this_transformers", lambda s: s),
])
def test_mit_layouts_load_every_tensor(layout, wrap, mit_b0_reference, tmp_path, caplog):
    path = write(tmp_path, f"{layout}.pth", wrap(mit_b0_reference))
    with caplog.at_level(logging.WARNING):
        backbone = build_backbone(model_cfg(backbone="mit_b0", pretrained=str(path)))
    assert_all_arrived(backbone.body, mit_b0_reference)
    assert warnings_of(caplog) == ""


def test_mit_file_with_an_extra_and_a_missing_tensor_names_both(mit_b0_reference, tmp_path, caplog):
    file = nvlabs_mit(mit_b0_reference)
    del file["block2.1.attn.kv.weight"]
    file["head.weight"] = torch.zeros(1000, 256)
    with caplog.at_level(logging.WARNING):
        build_backbone(model_cfg(backbone="mit_b0", pretrained=str(write(tmp_path, "mit.pth", file))))
    message = warnings_of(caplog)
    assert "2 of the model's tensors are not in the file" in message
    assert "stages.1.blocks.1.attention.k_proj.weight" in message or "block.1.1.attention.self.key" in message
    assert "1 of the file's tensors are unused (head.weight)" in message


def test_a_file_of_another_model_is_an_error_naming_the_file(mit_b0_reference, tmp_path):
    path = write(tmp_path, "swin.pth", {"layers.0.blocks.0.attn.qkv.weight": torch.zeros(3, 3)})
    with pytest.raises(ValueError, match="swin.pth does not fit mit_b0: none of the file's 1 tensors"):
        build_backbone(model_cfg(backbone="mit_b0", pretrained=str(path)))


def test_a_tensor_of_another_shape_is_an_error_naming_it(mit_b0_reference, tmp_path):
    path = write(tmp_path, "b0.pth", nvlabs_mit(mit_b0_reference))
    with pytest.raises(ValueError, match=r"mit_b4: \d+ tensors have other shapes, e\.g\. stages\.0\.patch_emb"):
        build_backbone(model_cfg(backbone="mit_b4", pretrained=str(path)))


def test_pretrained_path_takes_environment_variables(monkeypatch, tmp_path):
    from protoseg.models.backbones import weight_file

    (tmp_path / "r18.pth").write_bytes(b"")
    monkeypatch.setenv("PROTOSEG_WEIGHTS", str(tmp_path))
    assert weight_file("${PROTOSEG_WEIGHTS}/r18.pth") == tmp_path / "r18.pth"
    monkeypatch.delenv("PROTOSEG_WEIGHTS")
    with pytest.raises(FileNotFoundError, match=r"model.pretrained .*\$\{PROTOSEG_WEIGHTS\}, which is not set"):
        weight_file("${PROTOSEG_WEIGHTS}/r18.pth")
