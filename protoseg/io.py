"""Atomic file writes (a temp file beside the target, then rename), YAML reading, data-root expansion."""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import yaml


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


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # the mode open(path, "w") gives, not mkstemp's 0600
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_write_yaml(path: str | Path, obj) -> None:
    atomic_write_text(path, yaml.safe_dump(obj, sort_keys=False))


def atomic_torch_save(path: str | Path, obj) -> None:
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


class YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading numbers like `1e-2` as floats (YAML 1.2) rather than text."""


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def load_yaml(text: str):
    return yaml.load(text, Loader=YamlLoader)


def read_yaml(path: str | Path, what: str, error: type[Exception] = ValueError):
    """Parse a YAML file; a missing file or malformed YAML raises `error` naming the file."""
    try:
        return load_yaml(Path(path).read_text())
    except FileNotFoundError:
        raise error(f"{path}: no such {what}") from None
    except yaml.YAMLError as err:
        raise error(f"{path}: malformed YAML: {err}") from None


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
