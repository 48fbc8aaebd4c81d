"""The paper's decoders (mmseg's FCNHead, UPerHead, SegformerHead and the
official HRNet one) and mmseg's auxiliary FCN head."""
import pytest
import torch

from protoseg import config
from protoseg.complexity import count_macs_flops, count_params
from protoseg.losses import seg_cross_entropy, total_loss
from protoseg.models import build_model
from protoseg.models.decoders import DECODERS, build_decoder

IN_CHANNELS = [8, 16, 32, 64]


def model_cfg(**kw):
    return config.resolve({"model": kw})["model"]


def stage_maps(strides, size=64, batch=2):
    torch.manual_seed(0)
    return [torch.randn(batch, c, size // s, size // s) for c, s in zip(IN_CHANNELS, strides)]


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def conv_module(cin, cout, k):
    """mmcv ConvModule with BN: a conv without bias (bias='auto') + BN weight and bias."""
    return cin * cout * k * k + 2 * cout


# stride of each decoder's output for stage strides 4/8/16/32 and for a dilated 4/8/8/8 backbone
OUT_STRIDE = {"hrnet": (4, 4), "fcn": (32, 8), "upernet": (4, 4), "segformer": (4, 4)}


def test_a_decoders_own_option_reaches_it_from_the_spec():
    default = build_decoder(model_cfg(decoder="upernet", decoder_channels=8), IN_CHANNELS)
    fewer = build_decoder(model_cfg(decoder="upernet", decoder_channels=8,
                                    decoder_options={"upernet": {"pool_scales": [1, 3]}}), IN_CHANNELS)
    assert [m[0].output_size for m in default.ppm] == [1, 2, 3, 6]
    assert [m[0].output_size for m in fewer.ppm] == [1, 3]
    with pytest.raises(config.SpecError, match="pool_scales.*a non-empty list of integers in"):
        model_cfg(decoder_options={"upernet": {"pool_scales": [0]}})


@pytest.mark.parametrize("name", sorted(DECODERS))
@pytest.mark.parametrize("dilated", [False, True])
def test_decoder_output_shape_and_channels(name, dilated):
    strides = [4, 8, 8, 8] if dilated else [4, 8, 16, 32]
    decoder = build_decoder(model_cfg(decoder=name, decoder_channels=16), IN_CHANNELS).train()
    out = decoder(stage_maps(strides))
    stride = OUT_STRIDE[name][dilated]
    assert decoder.out_channels == 16
    assert out.shape == (2, 16, 64 // stride, 64 // stride)


@pytest.mark.parametrize("name,default", [("hrnet", sum(IN_CHANNELS)), ("fcn", 512), ("upernet", 512),
                                          ("segformer", 256)])
def test_decoder_channels_none_is_the_mmseg_default(name, default):
    assert build_decoder(model_cfg(decoder=name), IN_CHANNELS).out_channels == default


# by hand from mmseg's heads, in_channels [8, 16, 32, 64], channels C = 16
C = 16
HAND_COUNTS = {
    # conv 3x3 of the concatenated stages (120 channels)
    "hrnet": conv_module(120, C, 3),                                            # 17312
    # two 3x3 convs on the last stage, conv_cat 3x3 of (64 + C)
    "fcn": conv_module(64, C, 3) + conv_module(C, C, 3) + conv_module(64 + C, C, 3),  # 23136
    # PPM: 4 x 1x1 on 64; bottleneck 3x3 of 64 + 4C; laterals 1x1 on 8/16/32; 3 fpn 3x3; fpn_bottleneck 3x3 of 4C
    "upernet": (4 * conv_module(64, C, 1) + conv_module(64 + 4 * C, C, 3)
                + sum(conv_module(c, C, 1) for c in (8, 16, 32)) + 3 * conv_module(C, C, 3)
                + conv_module(4 * C, C, 3)),                                     # 39936
    # 1x1 per stage, 1x1 fusion of 4C
    "segformer": sum(conv_module(c, C, 1) for c in IN_CHANNELS) + conv_module(4 * C, C, 1),  # 3104
}


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_decoder_parameter_count_equals_mmseg_architecture_by_hand(name):
    decoder = build_decoder(model_cfg(decoder=name, decoder_channels=C), IN_CHANNELS)
    assert n_params(decoder) == HAND_COUNTS[name]


def test_decoders_use_the_configured_dropout_and_batchnorm_whatever_model_norm_says():
    # SyncBN is a conversion of the whole model where it can run (protoseg.distributed.sync_batchnorm)
    decoder = build_decoder(model_cfg(decoder="upernet", decoder_channels=C, dropout=0.3, norm="SyncBN"),
                            IN_CHANNELS)
    assert decoder.dropout.p == 0.3
    norms = [type(m) for m in decoder.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms == [torch.nn.BatchNorm2d] * (4 + 1 + 3 + 3 + 1)


@pytest.mark.parametrize("name", ["fcn", "upernet", "segformer"])
def test_mmseg_decoders_resize_bilinear_without_align_corners(name, monkeypatch):
    import torch.nn.functional as F

    calls = []
    interpolate = F.interpolate
    monkeypatch.setattr(F, "interpolate", lambda *a, **kw: calls.append(kw) or interpolate(*a, **kw))
    build_decoder(model_cfg(decoder=name, decoder_channels=C), IN_CHANNELS).train()(stage_maps([4, 8, 16, 32]))
    expected = {"fcn": 0, "upernet": 4 + 3 + 3, "segformer": 4}[name]  # PPM; top-down; to stride 4
    assert len(calls) == expected
    assert all(kw["mode"] == "bilinear" and kw["align_corners"] is False for kw in calls)


def test_segformer_concatenates_stages_in_mmseg_order():
    """Stage order 1/4, 1/8, 1/16, 1/32 (NVlabs' original code reverses it)."""
    decoder = build_decoder(model_cfg(decoder="segformer", decoder_channels=C), IN_CHANNELS).eval()
    feats = stage_maps([4, 8, 16, 32], batch=1)
    seen = []
    decoder.fusion_conv.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    decoder(feats)
    for i, (conv, f) in enumerate(zip(decoder.convs, feats)):
        expected = torch.nn.functional.interpolate(conv(f), size=(16, 16), mode="bilinear", align_corners=False)
        assert torch.allclose(seen[0][:, i * C:(i + 1) * C], expected, atol=1e-6)


@pytest.mark.parametrize("name", sorted(DECODERS))
@pytest.mark.parametrize("head", ["parametric", "nonparametric"])
def test_every_decoder_and_head_trains_through_build_model(name, head):
    cfg = model_cfg(decoder=name, head=head, decoder_channels=16, num_prototypes=2)
    model = build_model(cfg, 4).train()
    torch.manual_seed(0)
    images, labels = torch.randn(2, 3, 64, 64), torch.randint(0, 4, (2, 64, 64))
    out = model(images, labels)
    loss, _ = total_loss(out, labels, cfg)
    loss.backward()
    assert torch.isfinite(loss)
    assert model.decoder.out_channels == 16 and out["seg"].shape[:2] == (2, 4)
    assert all(p.grad is not None for p in model.decoder.parameters())


def aux_model(aux_head=True, **kw):
    cfg = model_cfg(decoder="upernet", decoder_channels=16, head="parametric", aux_head=aux_head, **kw)
    torch.manual_seed(0)
    return cfg, build_model(cfg, 4)


def test_aux_head_is_mmseg_fcn_on_stage_3_with_its_own_classifier():
    _, model = aux_model()
    c3 = model.backbone.channels[2]  # resnet18: 256
    assert n_params(model.aux_head) == conv_module(c3, 256, 3) + 256 * 4 + 4


def test_aux_head_output_and_loss_in_training():
    cfg, model = aux_model(aux_weight=0.25)
    model.train()
    torch.manual_seed(1)
    images, labels = torch.randn(2, 3, 64, 64), torch.randint(0, 4, (2, 64, 64))
    out = model(images, labels)
    assert out["aux_seg"].shape == (2, 4, 4, 4)  # stage 3: stride 16
    loss, parts = total_loss(out, labels, cfg)
    assert set(parts) == {"ce", "aux"}
    assert torch.allclose(parts["aux"], seg_cross_entropy(out["aux_seg"], labels, align_corners=False))
    assert torch.allclose(loss, parts["ce"] + 0.25 * parts["aux"])
    loss.backward()
    assert all(p.grad is not None for p in model.aux_head.parameters())


def test_aux_head_is_left_out_of_inference():
    _, model = aux_model()
    images, labels = torch.randn(2, 3, 64, 64), torch.randint(0, 4, (2, 64, 64))
    assert "aux_seg" not in model.train()(images)
    assert "aux_seg" not in model.eval()(images, labels)
    assert "aux_seg" not in model.eval()(images)


def test_aux_head_is_left_out_of_parameter_and_mac_counts():
    _, with_aux = aux_model(aux_head=True)
    _, without = aux_model(aux_head=False)
    assert n_params(with_aux) > n_params(without)
    counts_with, counts_without = count_params(with_aux), count_params(without)
    assert counts_with["params_learnable_with_aux"] == n_params(with_aux)  # as trained: the paper's FCN count
    assert {k: v for k, v in counts_with.items() if k != "params_learnable_with_aux"} == \
        {k: v for k, v in counts_without.items() if k != "params_learnable_with_aux"}
    assert count_macs_flops(with_aux, (64, 64)) == count_macs_flops(without, (64, 64))


def test_bad_decoder_name_is_a_clear_error():
    with pytest.raises(ValueError, match="model.decoder.*valid: .*upernet"):
        build_decoder({**model_cfg(), "decoder": "deeplab"}, IN_CHANNELS)
    with pytest.raises(config.SpecError, match="model.decoder"):
        model_cfg(decoder="deeplab")


@pytest.mark.parametrize("model, published", [
    ({"backbone": "swin_base", "decoder": "upernet", "aux_head": True}, 121e6),  # official Swin segmentation repo
    ({"backbone": "mit_b4", "decoder": "segformer", "decoder_channels": 768}, 64.1e6),  # SegFormer paper
])
def test_paper_pairs_have_the_published_parameter_count_at_k150(model, published):
    cfg = config.resolve({"model": {**model, "head": "parametric"}})["model"]
    learnable = count_params(build_model(cfg, 150))["params_learnable"]  # the aux head is left out, as published
    assert abs(learnable - published) / published < 0.03, learnable
