"""Run identity: the run id is a short hash of what the experiment sets, stable
across versions of the code.

The rule (tests/test_identity.py holds it):
- Every field of spec version 1 is hashed with its value, as version 1 did,
  so the ids of runs written before this rule stay valid.
- A field added later is hashed only where its value differs from its
  baseline (its default when it was added): adding a key whose default
  reproduces the old behaviour never changes an existing id.
- A renamed field is hashed under its first name.
- Resource and display fields (NOT_HASHED) never enter the id.
"""
from __future__ import annotations

import hashlib
import json

from protoseg import config

# Resource and display fields: they do not change the experiment, so not its id.
NOT_HASHED = frozenset(config.first_names().get(path, path) for path in config.tagged(config.RESOURCE))

# The fields of spec version 1 (frozen: never edit this list).
V1_FIELDS = frozenset({
    "model.backbone", "model.pretrained", "model.output_stride", "model.decoder", "model.decoder_channels",
    "model.dropout", "model.norm", "model.head", "model.embed_dim", "model.num_prototypes", "model.gamma",
    "model.update_prototypes", "model.update_assignment", "model.sinkhorn_epsilon", "model.sinkhorn_iterations",
    "model.proj_norm", "model.mask_norm", "model.ppc_weight", "model.ppd_weight", "model.ppc_temperature",
    "model.class_weights", "data.dataset", "data.root", "data.train_split", "data.val_split", "data.crop_size",
    "data.ratio_range", "data.flip", "data.photometric", "data.batch_size", "data.val_batch_size",
    "data.num_workers", "data.synthetic.num_classes", "data.synthetic.modes_per_class",
    "data.synthetic.image_size", "data.synthetic.num_train", "data.synthetic.num_val", "data.synthetic.seed",
    "train.iterations", "train.lr", "train.momentum", "train.weight_decay", "train.poly_power", "train.seed",
    "train.device", "train.amp", "train.deterministic", "train.threads", "train.log_interval",
    "train.eval_interval", "train.checkpoint_interval", "train.keep_checkpoints", "train.progress", "eval.mode",
    "eval.crop_size", "eval.stride", "eval.scales", "eval.flip", "eval.complexity_size",
})


class Hasher:
    """Run ids of many specs that differ from one `base` spec in a few fields, fast: the
    JSON of each hashed section is built once per distinct set of changes to it."""

    def __init__(self, base: dict):
        self.base = config.flatten(base)
        self.baseline = config.flatten(config.baseline())
        first = config.first_names()
        self.name = {path: first.get(path, path) for path in self.base}
        self.section = {path: name.split(".", 1)[0] for path, name in self.name.items()}
        self.sections = sorted(set(self.section.values()))
        self._memo: dict[tuple, str] = {}

    def _hashed(self, name: str, value) -> bool:
        return name not in NOT_HASHED and (name in V1_FIELDS or value != self.baseline.get(name))

    def _section_json(self, section: str, changes: tuple) -> str:
        values = {**self.base, **dict(changes)}
        nested: dict = {}
        for path, value in values.items():
            name = self.name[path]
            if self.section[path] != section or not self._hashed(name, value):
                continue
            config.set_path(nested, name.split(".", 1)[1], value)
        return json.dumps(nested, sort_keys=True, separators=(",", ":")) if nested or section in _V1_SECTIONS \
            else ""

    def run_id(self, delta: dict | None = None) -> str:
        """The id of `base` with the fields of `delta` ({path: value}) changed."""
        by_section: dict[str, list] = {}
        for path, value in (delta or {}).items():
            by_section.setdefault(self.section[path], []).append((path, value))
        parts = []
        for section in self.sections:
            changes = tuple(sorted(by_section.get(section, ()), key=lambda item: item[0]))
            key = (section, repr(changes))
            text = self._memo.get(key)
            if text is None:
                text = self._memo[key] = self._section_json(section, changes)
            if text:
                parts.append(f"{json.dumps(section)}:{text}")
        return hashlib.sha1(("{" + ",".join(parts) + "}").encode()).hexdigest()[:12]


_V1_SECTIONS = {name.split(".", 1)[0] for name in V1_FIELDS}


def run_id(spec: dict) -> str:
    """Short hash of what the resolved `spec` sets (see the module docstring)."""
    return Hasher(spec).run_id()
