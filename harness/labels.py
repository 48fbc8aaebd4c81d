"""How the harness names a cell in what it prints: its axis values."""
from __future__ import annotations


def settings_text(settings: dict) -> str:
    """A cell's axis values as 'head=parametric seed=0' (last part of each spec path)."""
    return " ".join(f"{k.split('.')[-1]}={v}" for k, v in settings.items())
