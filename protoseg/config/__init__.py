"""The run spec: one plain dict with sections model / data / train / eval.

`fields.FIELDS` is the documentation: every field, its default, its check and
its tags. `resolve(spec)` fills the defaults in and rejects unknown keys,
values of the wrong type and values out of range with an error naming the key
path and what would be valid. `history.HISTORY` keeps old specs meaning what
they meant.
"""
from ..text import did_you_mean
from .fields import (ANY_LENGTH, CHOICES, DECODER_OPTIONS, DEFAULTS, EVALUATION, FIELDS, PROTOTYPE_SECTION, RESOURCE,
                     TRAINING, UNTYPED, Field, in_section, tagged)
from .history import (HISTORY, SPEC_VERSION, baseline, changed_defaults, first_names, new_name, notice,
                      rename_keys)
from .paths import flatten, get, set_path
from .validate import (CROSS_FIELDS, SpecError, check_spec, check_value, load, num_classes, parse_assignments, resolve,
                       unused_fields)


__all__ = ["ANY_LENGTH", "CHOICES", "CROSS_FIELDS", "DECODER_OPTIONS", "DEFAULTS", "EVALUATION", "FIELDS", "HISTORY",
           "PROTOTYPE_SECTION", "RESOURCE", "SPEC_VERSION", "TRAINING", "UNTYPED", "Field", "SpecError", "baseline",
           "changed_defaults", "check_spec", "check_value", "did_you_mean", "first_names", "flatten", "get",
           "in_section", "load", "new_name", "notice", "parse_assignments", "rename_keys", "resolve", "set_path",
           "tagged", "unused_fields"]
