"""The run spec's field table: one record per field (default, check, choices, doc, tags).

Every other table about fields is derived from this one: the nested DEFAULTS,
the choice lists, the fields an evaluation may change, the fields a run id
leaves out (harness/identity.py), the fields the complexity cache leaves out
(protoseg/complexity.py) and the prototype section a parametric head ignores
(harness/matrix.py).
"""
from __future__ import annotations

from typing import Any, NamedTuple

from .. import registry
from . import checks as C

# tags
RESOURCE = "resource"        # how a run uses the machine, not what it computes: never part of a run id
TRAINING = "training"        # a model field that leaves the architecture (its parameter and MAC counts) alone
EVALUATION = "evaluation"    # an evaluation of a trained run may change it (harness evaluate --set)
UNTYPED = "untyped"          # may be null or of a type other than the default's
ANY_LENGTH = "any-length"    # a list of any non-empty length (other lists keep the default's length)

PROTOTYPE_SECTION = "model.prototype"  # the prototype head's fields: a parametric head ignores them


class Field(NamedTuple):
    default: Any
    doc: str = ""
    check: C.Check | None = None   # beyond the type; None is allowed wherever the default is None
    choices: tuple | None = None
    tags: frozenset = frozenset()


def field(default, doc: str = "", check: C.Check | None = None, choices=None, tags=()) -> Field:
    return Field(default, doc, check, tuple(choices) if choices is not None else None, frozenset(tags))


FIELDS: dict[str, Field] = {
    "model.backbone": field("resnet18", "a registered backbone (protoseg.registry.BACKBONES)",
                            choices=registry.BACKBONES),
    "model.pretrained": field(None, "local weight file for the backbone; never downloaded",
                              tags=(UNTYPED, TRAINING)),
    "model.output_stride": field(32, "8 = dilated last stages (resnet*)",
                                 ((lambda v: v in (8, 16, 32)), "8, 16 or 32")),
    "model.decoder": field("hrnet", "hrnet: stages resized to stride 4, concatenated, Conv3x3-BN-ReLU-Dropout; "
                                    "fcn (mmseg FCNHead) | upernet (PPM + FPN) | segformer (all-MLP)",
                           choices=registry.DECODERS),
    "model.aux_head": field(False, "mmseg's auxiliary FCN head on stage 3, training only"),
    "model.aux_weight": field(0.4, "its loss weight", C.NON_NEGATIVE, tags=(TRAINING,)),
    "model.drop_path": field(0.0, "stochastic depth of transformer backbones (Swin recipe: 0.3)", C.BELOW_ONE,
                             tags=(TRAINING,)),
    "model.decoder_channels": field(None, "None = the decoder's default: hrnet the sum of the stage channels "
                                          "(HRNet-W48: 720), fcn 512, upernet 512, segformer 256 (mmseg's)",
                                    C.WIDTH, tags=(UNTYPED,)),
    "model.decoder_kernel": field(None, "hrnet's fusion conv: None = 3 (official code, 4.67 M at W48) | 1 (mmseg's "
                                        "FCNHead kernel_size=1, the model of the paper's 65.9 M)",
                                  ((lambda v: type(v) is int and v in (1, 3)), "null, 1 or 3")),
    "model.dropout": field(0.1, "dropout before the head", C.BELOW_ONE, tags=(TRAINING,)),
    "model.norm": field("BN", "BN | SyncBN: every BatchNorm (backbone, decoder, aux head) synchronised across "
                              "processes; a single-process or CPU run keeps BatchNorm", choices=("BN", "SyncBN")),
    "model.head": field("nonparametric", "parametric (Conv1x1 classifier) | nonparametric (ProtoSeg prototypes)",
                        choices=registry.HEADS),
    "model.class_weights": field(None, "weights of the cross-entropy, one per class; None = equal", C.CLASS_WEIGHTS,
                                 tags=(UNTYPED, TRAINING)),
    "model.prototype.embed_dim": field(None, "projection output; None = decoder channels", C.WIDTH,
                                       tags=(UNTYPED,)),
    "model.prototype.num_prototypes": field(10, "M, prototypes per class", C.count(
        1, 1000, ": every pixel is scored against classes x M prototypes, and the paper uses up to 20")),
    "model.prototype.gamma": field(0.999, "prototype momentum", C.FRACTION, tags=(TRAINING,)),
    "model.prototype.update_prototypes": field(True, "in training, move the prototypes towards the correctly "
                                                     "predicted pixels assigned to them (momentum gamma)",
                                               tags=(TRAINING,)),
    "model.prototype.update_assignment": field("gumbel", "gumbel (official: a Gumbel hard sample of the Sinkhorn "
                                                         "plan) | argmax (the plan's best prototype)",
                                               choices=("gumbel", "argmax"),
                                               tags=(TRAINING,)),
    "model.prototype.sinkhorn_epsilon": field(0.05, "entropy weight of the Sinkhorn assignment", C.POSITIVE,
                                              tags=(TRAINING,)),
    "model.prototype.sinkhorn_iterations": field(3, "Sinkhorn iterations", C.count(1, 1000), tags=(TRAINING,)),
    "model.prototype.proj_norm": field("width", "width (official quirk: L2 over the W axis of NCHW) | none",
                                       choices=("width", "none")),
    "model.prototype.mask_norm": field(True, "LayerNorm over the K class scores"),
    "model.prototype.ppc_weight": field(0.01, "loss = CE + ppc_weight PPC + ppd_weight PPD", C.NON_NEGATIVE,
                                        tags=(TRAINING,)),
    "model.prototype.ppd_weight": field(0.001, "see ppc_weight", C.NON_NEGATIVE, tags=(TRAINING,)),
    "model.prototype.ppc_temperature": field(1.0, "1.0 in the official code, 0.1 in the paper", C.POSITIVE,
                                             tags=(TRAINING,)),

    "data.dataset": field("synthetic", "a registered dataset (protoseg.registry.DATASETS)", choices=registry.DATASETS),
    "data.root": field(None, "the dataset's folder (every dataset but synthetic)", tags=(UNTYPED, EVALUATION)),
    "data.train_split": field("train", "the split trained on"),
    "data.val_split": field("val", "the split evaluated"),
    "data.crop_size": field([128, 128], "[h, w] random crop for training", C.SIDES),
    "data.ratio_range": field([0.5, 2.0], "random resize range for training", C.RATIO_RANGE),
    "data.flip": field(True, "random horizontal flip"),
    "data.photometric": field(True, "brightness / contrast / saturation / hue jitter"),
    "data.mean": field([123.675, 116.28, 103.53], "RGB, 0..255: image = (image - mean) / std. ImageNet (mmseg); "
                                                  "TF-ported EfficientNet-Lite weights want [127]*3 / [128]*3", C.MEAN),
    "data.std": field([58.395, 57.12, 57.375], "see data.mean", C.STD),
    "data.batch_size": field(8, "the global training batch, split evenly over a run's processes", C.count(1, 4096)),
    "data.val_batch_size": field(1, "validation batch", C.count(1, 4096), tags=(EVALUATION,)),
    "data.num_workers": field(0, "data-loader processes", C.count(0, 1024), tags=(RESOURCE, EVALUATION)),
    "data.synthetic.num_classes": field(4, "K of the generated scenes",
                                        C.count(2, 255, " (labels are 8-bit, 255 is ignore)")),
    "data.synthetic.modes_per_class": field(2, "visual modes of each class", C.count(1, 1000)),
    "data.synthetic.image_size": field([128, 128], "[h, w]", C.SIDES),
    "data.synthetic.num_train": field(64, "training images", C.count(1, 10**6)),
    "data.synthetic.num_val": field(16, "validation images", C.count(1, 10**6)),
    "data.synthetic.seed": field(0, "the generator's seed", C.SEED),

    "train.iterations": field(200, "training iterations", C.count(1, 10**9)),
    "train.optimizer": field("sgd", "sgd (official) | adamw (mmseg's transformer recipes)",
                             choices=registry.OPTIMIZERS),
    "train.lr": field(0.01, "base learning rate", C.POSITIVE),
    "train.momentum": field(0.9, "sgd", C.BELOW_ONE),
    "train.betas": field([0.9, 0.999], "adamw", C.BETAS),
    "train.weight_decay": field(5e-4, "weight decay", C.NON_NEGATIVE),
    "train.norm_decay": field(True, "False: no weight decay where a name has norm or a position table (mmseg)"),
    "train.head_lr_mult": field(1.0, "lr multiplier of decoder and head (SegFormer recipe: 10)", C.POSITIVE),
    "train.warmup_iters": field(0, "linear warm-up from warmup_ratio * lr (mmseg LinearLR)", C.count(0)),
    "train.warmup_ratio": field(1e-6, "see warmup_iters", ((lambda v: 0 < v <= 1), "a number in (0, 1]")),
    "train.poly_power": field(0.9, "then lr * (1 - t / T) ** power down to min_lr (mmseg PolyLR)", C.NON_NEGATIVE),
    "train.min_lr": field(0.0, "see poly_power", C.NON_NEGATIVE),
    "train.seed": field(0, "seed of the weights, the batches and the augmentation", C.SEED),
    "train.device": field("auto", "auto | cpu | cuda | cuda:N", C.DEVICE, tags=(RESOURCE, EVALUATION)),
    "train.amp": field(False, "mixed precision, CUDA only"),
    "train.deterministic": field(True, "deterministic algorithms (cuDNN and torch)"),
    "train.threads": field(None, "torch CPU threads; None = torch's default", C.THREADS, tags=(UNTYPED, RESOURCE)),
    "train.log_interval": field(10, "iterations between train.log lines", C.count()),
    "train.eval_interval": field(0, "0 = evaluate only at the end", C.count(0)),
    "train.checkpoint_interval": field(50, "iterations between checkpoints", C.count()),
    "train.keep_checkpoints": field(2, "the newest N checkpoints are kept", C.count()),
    "train.keep_checkpoints_when_done": field(True, "false: a done run's checkpoints are deleted (nothing resumes "
                                                    "it; large sweeps on a quota)", tags=(RESOURCE,)),
    "train.progress": field(True, "progress bar / status line on stderr", tags=(RESOURCE,)),

    "eval.mode": field("whole", "whole | slide", choices=("whole", "slide"), tags=(EVALUATION,)),
    "eval.resize": field(None, "[long, short]: rescale into that box first, keeping the ratio (mmseg's test "
                               "Resize; ADE20K / COCO-Stuff [2048, 512])", C.RESIZE, tags=(EVALUATION,)),
    "eval.crop_size": field([512, 512], "window of sliding inference", C.SIDES, tags=(EVALUATION,)),
    "eval.stride": field([341, 341], "stride of sliding inference", C.SIDES, tags=(EVALUATION,)),
    "eval.scales": field([1.0], "multi-scale: logits summed over scales", C.SCALES, tags=(EVALUATION, ANY_LENGTH)),
    "eval.flip": field(False, "also sum the flipped image's logits", tags=(EVALUATION,)),
    "eval.complexity_size": field([512, 512], "[h, w] input for parameter / MAC / FLOP counts", C.SIDES),
    "eval.fps_images": field(200, "inference FPS over this many val images at batch 1 (0 = off)", C.count(0),
                             tags=(RESOURCE,)),
    "eval.fps_warmup": field(5, "after this many untimed (MMSegmentation's benchmark tool)", C.count(0),
                             tags=(RESOURCE,)),
    "eval.fps_max_s": field(60.0, "or as many as this many seconds allow", C.POSITIVE, tags=(RESOURCE,)),
}


FIELDS.update({
    f"model.decoder_options.{decoder}.{name}": field(option.default, option.doc, option.check,
                                                     tags=(ANY_LENGTH,) if option.any_length else ())
    for decoder, entry in registry.DECODERS.items() for name, option in entry.options.items()})
DECODER_OPTIONS = "model.decoder_options"  # a decoder's own settings: the other decoders ignore them


def tagged(tag: str) -> tuple[str, ...]:
    """The paths of the fields that carry `tag`, in table order."""
    return tuple(path for path, f in FIELDS.items() if tag in f.tags)


def in_section(section: str) -> tuple[str, ...]:
    """The paths of the fields under `section` (a dotted prefix), in table order."""
    return tuple(path for path in FIELDS if path.startswith(section + "."))


def _nested() -> dict:
    out: dict = {}
    for path, f in FIELDS.items():
        *parents, leaf = path.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = f.default
    return out


DEFAULTS: dict[str, Any] = _nested()
CHOICES: dict[str, tuple] = {path: f.choices for path, f in FIELDS.items() if f.choices is not None}
