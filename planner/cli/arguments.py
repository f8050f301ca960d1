"""argparse types for the numbers `plan` options take.

Each parses one option value and raises argparse.ArgumentTypeError saying what is valid, so
argparse reports it the usual way ("plan search: error: argument --time-limit: ...") and
exits with code 2. Python's float() reads "nan", "inf" and "1e999" (as inf); none is a
valid option value, so every type here wants a finite number.
"""

from __future__ import annotations

import argparse
import math
from typing import Callable

# A search stops by itself when its best plan stops improving, usually within a minute; a
# limit beyond a week is a typo (a time in milliseconds?), not a plan to wait for.
MAX_SEARCH_SECONDS = 7 * 24 * 3600.0


def _finite_float(text: str, wanted: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"got {text!r}; give {wanted}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"got {text!r}, not a finite number; give {wanted}")
    return value


def positive_seconds(text: str) -> float:
    """Seconds above 0 and at most MAX_SEARCH_SECONDS (a search time limit)."""
    wanted = f"seconds above 0 and at most {MAX_SEARCH_SECONDS:,.0f} (a week)"
    value = _finite_float(text, wanted)
    if not 0 < value <= MAX_SEARCH_SECONDS:
        raise argparse.ArgumentTypeError(f"got {text!r}; give {wanted}")
    return value


def non_negative_gib(text: str) -> float:
    """GiB of at least 0 (the upper bound depends on the devices and is checked with them)."""
    wanted = "GiB of at least 0"
    value = _finite_float(text, wanted)
    if value < 0:
        raise argparse.ArgumentTypeError(f"got {text!r}; give {wanted}")
    return value


def integer_in_range(low: int, high: int) -> Callable[[str], int]:
    """A type for whole numbers from `low` to `high` inclusive."""
    wanted = f"a whole number from {low:,} to {high:,}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"got {text!r}; give {wanted}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"got {text!r}; give {wanted}")
        return value

    return parse
