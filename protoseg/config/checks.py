"""The vocabulary of value checks the field table uses: each is (check, text of what is valid)."""
from __future__ import annotations

import math
from typing import Callable

Check = tuple[Callable, str]


def count(minimum: int = 1, maximum: int | None = None, why: str = "") -> Check:
    if maximum is None:
        return (lambda v: v >= minimum), f"an integer >= {minimum}"
    return (lambda v: minimum <= v <= maximum), f"an integer in [{minimum}, {maximum:,}]{why}"


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _positive(v) -> bool:
    return math.isfinite(v) and v > 0


def numbers(check: Callable, text: str) -> Check:
    """A list whose every item is a number passing `check`."""
    return (lambda v: all(_number(x) and check(x) for x in v)), text


SEED = count(0, 2**32 - 1, " (numpy's seed range)")
SIDE = 8192  # pixels: a crop, an image or a stride longer than this is a typo, not a model
SIDES = ((lambda v: all(isinstance(x, int) and not isinstance(x, bool) and 1 <= x <= SIDE for x in v)),
         f"[h, w] of integers in [1, {SIDE}]")
WIDTH = count(1, 8192, " (channels)")
POSITIVE = (_positive, "a finite number > 0")
FRACTION = ((lambda v: 0 <= v <= 1), "a number in [0, 1]")
BELOW_ONE = ((lambda v: 0 <= v < 1), "a number in [0, 1)")
NON_NEGATIVE = ((lambda v: math.isfinite(v) and v >= 0), "a finite number >= 0")


def _device(v) -> bool:
    head, _, index = v.partition(":")
    return v in ("auto", "cpu", "cuda", "mps") or (head == "cuda" and index.isdigit())


DEVICE = (_device, "auto, cpu, cuda, cuda:N or mps")
THREADS = ((lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1), "null or an integer >= 1")
CLASS_WEIGHTS = ((lambda v: isinstance(v, list) and all(_number(x) and math.isfinite(x) and x >= 0 for x in v)),
                 "null or a list of K finite numbers >= 0")
BETAS = numbers(lambda x: 0 <= x < 1, "[b1, b2] in [0, 1)")
RATIO_RANGE = ((lambda v: all(_number(x) for x in v) and 0 < v[0] <= v[1]), "[low, high] with 0 < low <= high")
MEAN = numbers(math.isfinite, "[r, g, b] of finite numbers (0..255 scale)")
STD = numbers(_positive, "[r, g, b] of finite numbers > 0 (0..255 scale)")
SCALES = numbers(_positive, "a non-empty list of numbers > 0")
RESIZE = ((lambda v: isinstance(v, list) and len(v) == 2 and SIDES[0](v)),
          f"null or [long, short] of integers in [1, {SIDE}]")
