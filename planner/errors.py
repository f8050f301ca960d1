"""User-facing errors: one clear line naming the file, the field and what would be valid.

`InputError` is raised for anything a user wrote that we cannot accept; the CLI prints its
message as a single line and exits with code 2. Internal invariants use `assert` instead.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError


class InputError(Exception):
    """Bad user input. The message is one line: `<file>: <field>: <what is wrong>`."""


def field_path(location: tuple) -> str:
    """Render a pydantic error location such as ('batch', 'n_seqs') as `batch.n_seqs`."""
    parts = []
    for item in location:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "(top level)"


def _describe_one(error: dict) -> str:
    kind = error.get("type", "")
    message = error.get("msg", "invalid")
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required field is missing"
    if message.startswith("Value error, "):
        message = message[len("Value error, "):]
    if message.startswith("Assertion failed, "):
        message = message[len("Assertion failed, "):]
    return message


def describe_validation_error(err: ValidationError, source: Path | str,
                              prefix: tuple = ()) -> InputError:
    """Turn a pydantic ValidationError into one InputError line (first error, count of rest)."""
    errors = err.errors()
    first = errors[0]
    location = field_path(prefix + tuple(first.get("loc", ())))
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return InputError(f"{source}: {location}: {_describe_one(first)}{more}")


def one_line(text: str) -> str:
    """Collapse whitespace so a message is guaranteed to be a single line."""
    return " ".join(text.split())
