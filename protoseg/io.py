"""Atomic file writes (a temp file beside the target, then rename), YAML reading, data-root expansion."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Callable, ContextManager

import yaml


class LostClaim(RuntimeError):
    """Raised by a write guard: the writer no longer owns the folder (another process took the run
    over), so nothing is written."""


class LinkRefused(ValueError):
    """A folder or file the harness would write through is a symbolic link (it could point anywhere)."""


def refuse_link(path: str | Path, what: str = "folder") -> None:
    """LinkRefused when `path` is a symbolic link: in a results folder shared by a group, a link
    planted by anyone would make our writes land wherever it points."""
    if Path(path).is_symlink():
        raise LinkRefused(f"{path}: this {what} is a symbolic link (to {os.readlink(path)}); nothing is written "
                          f"through links in a results folder: replace it with a real {what} or remove it")


def open_append(path: str | Path):
    """`path` opened for appending text, created with the umask's mode; a symbolic link is refused
    (LinkRefused), never followed."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as err:
        if err.errno == errno.ELOOP:
            refuse_link(path, "file")
        raise
    return os.fdopen(fd, "a", encoding="utf-8")


def _umask() -> int:
    """The process umask; Linux's /proc avoids os.umask's set-and-restore, a race with other threads."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o077)  # in the gap, a file another thread creates is too private, never too open
    os.umask(mask)
    return mask


def ensure_dir(path: Path) -> None:
    """mkdir -p, asking first: a stat costs far less than a mkdir that fails, which locks the parent folder
    (on a cluster filesystem, a round trip to its server); the store asks for the same folders often."""
    if not path.is_dir():
        path.mkdir(parents=True, exist_ok=True)


Guard = Callable[[], ContextManager]  # a write happens inside guard(): the harness's fencing check


def atomic_write_bytes(path: str | Path, data: bytes, guard: Guard = contextlib.nullcontext) -> None:
    """`data` to `path` at once or not at all; the rename happens inside `guard()` (a fencing check
    that raises LostClaim when the writer lost the folder)."""
    path = Path(path)
    ensure_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # the mode open(path, "w") gives, not mkstemp's 0600
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        with guard():
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


SAFE_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml's: the same text, ten times faster


def atomic_write_text(path: str | Path, text: str, guard: Guard = contextlib.nullcontext) -> None:
    atomic_write_bytes(path, text.encode(), guard)


def atomic_write_json(path: str | Path, obj, guard: Guard = contextlib.nullcontext) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n", guard)


def atomic_write_yaml(path: str | Path, obj, guard: Guard = contextlib.nullcontext) -> None:
    atomic_write_text(path, yaml.dump(obj, Dumper=SAFE_DUMPER, sort_keys=False), guard)


def atomic_torch_save(path: str | Path, obj, guard: Guard = contextlib.nullcontext) -> None:
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue(), guard)


class YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading numbers like `1e-2` as floats (YAML 1.2) rather than text."""


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def load_yaml(text: str):
    return yaml.load(text, Loader=YamlLoader)


MAX_YAML_BYTES = 10 * 2**20  # experiment files and specs are kilobytes; a bigger one is a mistake
MAX_YAML_DEPTH = 32
MAX_YAML_VALUES = 10**6  # after YAML aliases are expanded ("billion laughs")


def read_yaml(path: str | Path, what: str, error: type[Exception] = ValueError):
    """Parse a YAML file; a missing, huge, non-UTF-8, too deeply nested or malformed file raises
    `error` naming the file and the cause."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_YAML_BYTES:
            raise error(f"{path}: {size / 2**20:.0f} MB; the {what} is not read (the limit is "
                        f"{MAX_YAML_BYTES // 2**20} MB: a matrix of axes needs kilobytes)")
        value = load_yaml(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise error(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise error(f"{path}: a folder, not the {what}") from None
    except UnicodeDecodeError as err:
        raise error(f"{path}: not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start}); "
                    f"save the {what} as UTF-8") from None
    except RecursionError:
        raise error(f"{path}: lists and mappings nest too deeply to parse; the {what} is not read") from None
    except yaml.YAMLError as err:
        raise error(f"{path}: malformed YAML: {err}") from None
    try:
        too_deep = _depth(value) > MAX_YAML_DEPTH
    except OverflowError:
        raise error(f"{path}: YAML aliases expand it to more than {MAX_YAML_VALUES:.0e} values; the {what} "
                    f"is not read") from None
    if too_deep:
        raise error(f"{path}: lists and mappings nest more than {MAX_YAML_DEPTH} levels deep (or YAML aliases "
                    f"make one hold itself); the {what} is not read")
    return value


def _depth(value) -> int:
    """How deeply lists and mappings nest in a parsed document (0 for a scalar); YAML aliases that make
    a container hold itself count as endless (MAX_YAML_DEPTH + 1). Walked without recursion."""
    deepest, stack, path, walked = 0, [(value, 1, False)], set(), 0
    while stack:
        walked += 1
        if walked > 2 * MAX_YAML_VALUES:
            raise OverflowError
        item, depth, leaving = stack.pop()
        if leaving:
            path.discard(id(item))
            continue
        if not isinstance(item, (dict, list)):
            continue
        if id(item) in path or depth > MAX_YAML_DEPTH:
            return MAX_YAML_DEPTH + 1
        deepest = max(deepest, depth)
        path.add(id(item))
        stack.append((item, depth, True))
        stack.extend((child, depth + 1, False) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


_VARIABLE = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def expand_env(text: str | None, key: str = "data.root") -> str | None:
    """A path field (data.root, model.pretrained) with ${VAR} and ${VAR:-default} replaced from the
    environment. The run id hashes the unexpanded text, so one experiment file names the same runs on
    every machine."""
    if text is None:
        return None

    def value(match: re.Match) -> str:
        name, default = match.groups()
        if os.environ.get(name):
            return os.environ[name]
        if default is None:
            raise FileNotFoundError(f"{key} {text!r} uses ${{{name}}}, which is not set; set it to the "
                                    f"folder it names or write ${{{name}:-default folder}}")
        return default

    return _VARIABLE.sub(value, text)
