"""User-facing errors: one clear line naming the file, the field and what would be valid.

`InputError` is raised for anything a user wrote that we cannot accept; the CLI prints its
message as a single line and exits with code 2. Internal invariants use `assert` instead.
"""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError


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


def _without_optional(annotation: Any) -> Any:
    """`X` for `Optional[X]`; anything else unchanged."""
    if get_origin(annotation) in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return members[0]
    return annotation


def _model_at(model: type[BaseModel] | None, location: tuple) -> type[BaseModel] | None:
    """The pydantic model found by following `location` from `model` (None if not a model)."""
    current: Any = model
    for item in location:
        current = _without_optional(current)
        origin, args = get_origin(current), get_args(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            if item not in current.model_fields:
                return None
            current = current.model_fields[item].annotation
        elif origin is dict and len(args) == 2:
            current = args[1]
        elif origin in (list, tuple) and args and isinstance(item, int):
            current = args[0] if origin is list or args[-1] is Ellipsis else args[item]
        else:
            return None
    current = _without_optional(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _describe_one(error: dict, model: type[BaseModel] | None = None) -> str:
    kind = error.get("type", "")
    message = error.get("msg", "invalid")
    if kind == "extra_forbidden":
        container = _model_at(model, tuple(error.get("loc", ()))[:-1])
        if container is None:
            return "unknown key"
        return f"unknown key; valid keys: {', '.join(container.model_fields)}"
    if kind == "missing":
        return "required field is missing"
    if message.startswith("Value error, "):
        message = message[len("Value error, "):]
    if message.startswith("Assertion failed, "):
        message = message[len("Assertion failed, "):]
    return message


def describe_validation_error(err: ValidationError, source: Path | str,
                              prefix: tuple = (),
                              model: type[BaseModel] | None = None) -> InputError:
    """Turn a pydantic ValidationError into one InputError line (first error, count of rest).

    `model` is the class that was validated; with it, an unknown key lists the valid keys.
    """
    errors = err.errors()
    first = errors[0]
    location = field_path(prefix + tuple(first.get("loc", ())))
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return InputError(f"{source}: {location}: {_describe_one(first, model)}{more}")


ModelT = TypeVar("ModelT", bound=BaseModel)


def validated(model: type[ModelT], data: dict, source: Path | str) -> ModelT:
    """`model(**data)`, or the InputError line of its first validation problem, naming
    `source` and the field (an unknown key lists the valid ones; a key that is not a
    string, which `**` cannot pass, is named too)."""
    try:
        return model(**data)
    except ValidationError as err:
        raise describe_validation_error(err, source, model=model) from None
    except TypeError as err:
        raise InputError(f"{source}: {err}") from None


def one_line(text: str) -> str:
    """Collapse whitespace so a message is guaranteed to be a single line."""
    return " ".join(text.split())
