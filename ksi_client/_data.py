"""Request data without the options the caller left out (the daemon applies its defaults)."""
from __future__ import annotations

from typing import Any


def without_none(**fields: Any) -> dict:
    return {key: value for key, value in fields.items() if value is not None}
