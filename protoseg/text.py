"""Text helpers shared by every error message that suggests a valid name."""
from __future__ import annotations

import difflib


def did_you_mean(key: str, valid) -> str:
    """' (did you mean 'x'?)' for the closest of `valid`, or ''."""
    close = difflib.get_close_matches(key, list(valid), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""
