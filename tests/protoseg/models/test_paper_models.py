"""table2 builds the models the paper measured: their #Param against the paper's Tables 1-2
(results/paper/protoseg_cvpr22.yaml), mmseg's ResNetV1c weights, the HRNet head switch, SyncBN
conversion, attention in the MAC / FLOP counts, and what all this does to run ids."""
from __future__ import annotations

import contextlib
import io
import logging

import pytest
import torch
import yaml
from mmengine.analysis import FlopAnalyzer
from torch.utils.flop_counter import FlopCounterMode

from conftest import ROOT
from harness import matrix
from protoseg import config, distributed
from protoseg.complexity import _SegOnly, count_macs_flops, count_params
from protoseg.models import build_model
from protoseg.models.backbones import build_backbone
from protoseg.models.mit import VARIANTS

TABLE2 = ROOT / "experiments" / "table2.yaml"
PAPER = yaml.safe_load((ROOT / "results" / "paper" / "protoseg_cvpr22.yaml").read_text())["entries"]


def paper_params(backbone: str, decoder: str, head: str) -> float:
    (value,) = {e["params_M"] for e in PAPER
                if (e["backbone"], e["decoder"], e["head"]) == (backbone, decoder, head)}
    return value * 1e6


def ade20k_model_cfg(family: str, head: str = "parametric", **changes) -> dict:
    """The model section of table2's ADE20K cell of `family` (K = 150, as the paper counts), no weights."""
    (run,) = [r for r in matrix.load(TABLE2).runs
              if r.settings["preset"] == f"{family}-ade20k" and r.settings["model.head"] == head]
    return config.resolve({"model": {**run.spec["model"], "pretrained": None, **changes}})["model"]


@pytest.fixture(scope="module")
def built():
    """{family: table2's parametric ADE20K model}; each is built once (they take seconds each)."""
    return {family: build_model(ade20k_model_cfg(family), 150)
            for family in ("fcn_r101", "hrnet_w48", "swin_b", "segformer_b4")}


@pytest.mark.slow
@pytest.mark.parametrize("family, backbone, decoder", [
    ("fcn_r101", "resnet101c", "fcn"),       # with the auxiliary head, as the paper counts FCN
    ("swin_b", "swin_base", "segformer"),    # the light head, not UperNet
    ("segformer_b4", "mit_b4", "segformer"),
])
def test_table2_parametric_models_have_the_papers_size(built, family, backbone, decoder):
    ours = count_params(built[family])["params_learnable_with_aux"]
    assert abs(ours - paper_params(backbone, decoder, "parametric")) / ours < 0.01, ours


@pytest.mark.slow
def test_hrnet_keeps_the_official_3x3_head_and_its_1x1_switch_is_the_papers_size(built):
    official = count_params(built["hrnet_w48"])["params_learnable_with_aux"]
    one_by_one = count_params(build_model(ade20k_model_cfg("hrnet_w48", decoder_kernel=1), 150))
    paper = paper_params("hrnet_w48", "hrnet", "parametric")
    assert official - one_by_one["params_learnable_with_aux"] == 720 * 720 * 8  # 3x3 -> 1x1 at 720 channels
    assert abs(one_by_one["params_learnable_with_aux"] - paper) / paper < 0.01
    assert official > 1.05 * paper
    assert built["hrnet_w48"].decoder.conv.conv.kernel_size == (3, 3)


@pytest.mark.slow
def test_the_fcn_auxiliary_head_is_in_the_trained_count_only(built):
    counts = count_params(built["fcn_r101"])
    aux = sum(p.numel() for p in built["fcn_r101"].aux_head.parameters())
    assert counts["params_learnable_with_aux"] - counts["params_learnable"] == aux > 0


def test_decoder_kernel_is_refused_for_another_decoder_and_checked_in_the_spec():
    with pytest.raises(ValueError, match="model.decoder_kernel is 1 for decoder 'segformer'"):
        build_model(config.resolve({"model": {"backbone": "mit_b0", "decoder": "segformer",
                                              "decoder_kernel": 1}})["model"], 4)
    for bad in (2, True, "3"):
        with pytest.raises(config.SpecError, match="model.decoder_kernel.*null, 1 or 3"):
            config.resolve({"model": {"decoder_kernel": bad}})


def test_resnet101c_is_mmsegs_resnetv1c_deep_stem():
    backbone = build_backbone(config.resolve({"model": {"backbone": "resnet101c", "output_stride": 8}})["model"])
    stem = backbone.body.conv1
    assert [stem[i].out_channels for i in (0, 3, 6)] == [32, 32, 64]
    assert sum(p.numel() for p in stem.parameters()) + sum(p.numel() for p in backbone.body.bn1.parameters()) \
        == 28768  # mmseg's ResNetV1c stem: three 3x3 convs 32-32-64 with their BatchNorms


def test_mmsegs_resnetv1c_key_layout_loads_every_tensor(tmp_path, caplog):
    cfg = config.resolve({"model": {"backbone": "resnet101c"}})["model"]
    torch.manual_seed(0)
    reference = {k: torch.randn_like(v, dtype=torch.float32).to(v.dtype) if v.is_floating_point() else v
                 for k, v in build_backbone(cfg).body.state_dict().items()}
    timm_to_mmseg = {"conv1.0.": "stem.0.", "conv1.1.": "stem.1.", "conv1.3.": "stem.3.", "conv1.4.": "stem.4.",
                     "conv1.6.": "stem.6.", "bn1.": "stem.7."}
    mmseg = {}
    for key, value in reference.items():
        prefix = next((p for p in timm_to_mmseg if key.startswith(p)), "")
        mmseg[timm_to_mmseg.get(prefix, "") + key[len(prefix):]] = value
    assert "stem.7.running_var" in mmseg and "layer4.2.conv3.weight" in mmseg and "conv1.0.weight" not in mmseg
    path = tmp_path / "resnet101_v1c.pth"
    torch.save({"state_dict": mmseg}, path)
    with caplog.at_level(logging.WARNING):
        loaded = build_backbone({**cfg, "pretrained": str(path)}).body.state_dict()
    assert all(torch.equal(loaded[k], reference[k]) for k in reference)
    assert "not in the file" not in caplog.text and "unused" not in caplog.text


# ---------------------------------------------------------------- SyncBN

def _batchnorms(model) -> tuple[int, int]:
    """(plain BatchNorms, SyncBatchNorms) of a model."""
    plain = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and not isinstance(m, torch.nn.SyncBatchNorm)
                for m in model.modules())
    return plain, sum(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())


@pytest.mark.slow
@pytest.mark.parametrize("family, backbone_norms", [("fcn_r101", 106), ("hrnet_w48", 305), ("swin_b", 0),
                                                    ("segformer_b4", 0)])
def test_syncbn_converts_every_batchnorm_of_backbone_decoder_and_aux_head(family, backbone_norms):
    model = build_model(ade20k_model_cfg(family), 150)
    before, _ = _batchnorms(model)
    assert _batchnorms(model.backbone) == (backbone_norms, 0)
    assert distributed.sync_batchnorm(model, "SyncBN", world=2, device_type="cuda") == before
    assert _batchnorms(model) == (0, before)
    assert _batchnorms(model.decoder)[0] == 0 and _batchnorms(model.decoder)[1] > 0
    if model.aux_head is not None:
        assert _batchnorms(model.aux_head) == (0, 1)


@pytest.mark.parametrize("world, device", [(1, "cuda"), (2, "cpu"), (1, "cpu")])
def test_syncbn_stays_batchnorm_with_a_notice_where_it_cannot_run(world, device, capsys):
    config.history._told.clear()
    model = build_model(config.resolve({"model": {"backbone": "resnet18", "norm": "SyncBN"}})["model"], 4)
    before = _batchnorms(model)
    assert distributed.sync_batchnorm(model, "SyncBN", world=world, device_type=device) == 0
    assert _batchnorms(model) == before and before[1] == 0
    err = capsys.readouterr().err
    assert err.count("notice:") == 1 and f"{world} process(es) on {device}" in err


def test_batchnorm_is_left_alone_without_a_notice(capsys):
    model = build_model(config.resolve({"model": {"backbone": "resnet18"}})["model"], 4)
    assert distributed.sync_batchnorm(model, "BN", world=2, device_type="cuda") == 0
    assert _batchnorms(model)[1] == 0 and "notice" not in capsys.readouterr().err


def test_syncbn_keeps_the_activation_of_timms_fused_batchnorm():
    model = build_model(config.resolve({"model": {"backbone": "tf_efficientnet_lite0"}})["model"], 4)
    model.eval()
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(image)["seg"]
        distributed.sync_batchnorm(model, "SyncBN", world=2, device_type="cuda")
        after = model(image)["seg"]  # eval mode: SyncBatchNorm runs as BatchNorm on CPU
    assert torch.equal(before, after)


# ---------------------------------------------------------------- attention in the counts

def test_mit_counts_include_attention_as_counted_by_hand():
    """A MiT's attention (q k^T and a v per block: 2 N M C multiply-adds, N tokens, M = N / sr^2
    reduced keys, C channels) is in the MACs and, doubled, in the FLOPs; without the handles the
    counters see scaled_dot_product_attention as zero."""
    size = 128
    model = build_model(config.resolve({"model": {"backbone": "mit_b0", "decoder": "segformer",
                                                  "head": "parametric"}})["model"], 19).eval()
    hidden, depths = VARIANTS["mit_b0"]
    attention = 0
    for channels, depth, stride, reduction in zip(hidden, depths, (4, 8, 16, 32), (8, 4, 2, 1)):
        tokens = (size // stride) ** 2
        attention += depth * 2 * tokens * (tokens // reduction ** 2) * channels
    image = torch.zeros(1, 3, size, size)
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        plain_macs = FlopAnalyzer(_SegOnly(model), (image,)).unsupported_ops_warnings(False).total()
        counter = FlopCounterMode(display=False)
        with counter:
            _SegOnly(model)(image)
    counts = count_macs_flops(model, (size, size))
    assert counts["macs"] - plain_macs == attention
    assert counts["flops"] - counter.get_total_flops() == 2 * attention


# ---------------------------------------------------------------- run ids

def test_decoder_kernel_at_its_default_is_not_in_the_id_and_set_it_is():
    from harness import identity

    spec = config.resolve({"model": {"backbone": "hrnet_w18_small"}})
    without = identity.run_id({**spec, "model": {k: v for k, v in spec["model"].items() if k != "decoder_kernel"}})
    assert identity.run_id(spec) == without
    spec["model"]["decoder_kernel"] = 1
    assert identity.run_id(spec) != without


def test_the_committed_camvid_runs_keep_their_ids():
    planned = {run.run_id for run in matrix.load(ROOT / "experiments" / "camvid.yaml").runs}
    committed = {p.parent.name for p in (ROOT / "results" / "camvid").glob("*/metrics.json")}
    assert committed and planned == committed
