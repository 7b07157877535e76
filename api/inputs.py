"""What a request may carry, so that bad input is a 422 naming the problem and never reaches the database.

- Integers the database stores have the column's range: ids are 64-bit (`Id`), paging offsets too,
  steps 32-bit (the spec's integers are bounded in eos_core/spec.py). Path and query parameters
  declare those bounds, so the OpenAPI document states them.
- Text is refused when it holds a NUL character (PostgreSQL text cannot store one) or a lone UTF-16
  surrogate such as `"\\ud800"` (JSON can escape one, UTF-8 cannot encode it). `Text` does this for
  plain strings; `json_errors` walks a JSON document (the spec, the sweep) and also refuses numbers
  that are not finite (`1e400`, `NaN`: Python's JSON parser accepts both, PostgreSQL's JSON does not).
- `printable` makes an error response encodable whatever input it quotes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import Path, Query
from pydantic import AfterValidator, Field
from pydantic_core import PydanticCustomError

from eos_core.spec import MAX_INT

MAX_ID = 2**63 - 1  # ids are BIGINT
MAX_OFFSET = 2**63 - 1  # PostgreSQL's OFFSET is a BIGINT
MAX_STEP = MAX_INT  # runs.steps and runs.step are INTEGER, like every integer of a spec
# Documents the NUL rule in the OpenAPI schema (lone surrogates cannot be written in a pattern).
NO_NUL = "^[^\\u0000]*$"

FieldError = dict[str, Any]


def text_problem(value: str) -> str | None:
    """Why `value` cannot be stored as text, or None."""
    if "\x00" in value:
        return "holds a NUL character (\\u0000), which cannot be stored"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(value[exc.start])
        return f"holds a lone UTF-16 surrogate (\\u{code:04x} at position {exc.start}), which is not valid Unicode"
    return None


def _checked_text(value: str) -> str:
    problem = text_problem(value)
    if problem is not None:
        raise PydanticCustomError("string_unstorable", "the text {problem}", {"problem": problem})
    return value


# A string without NUL characters or lone surrogates.
Text = Annotated[str, AfterValidator(_checked_text), Field(json_schema_extra={"pattern": NO_NUL})]


def id_path(what: str) -> Any:
    return Path(ge=1, le=MAX_ID, description=f"the {what}'s id (1 to 2^63 - 1)")


ExperimentId = Annotated[int, id_path("experiment")]
RunId = Annotated[int, id_path("run")]
ExperimentIdQuery = Annotated[
    int, Query(ge=1, le=MAX_ID, description="the experiment whose runs to list (1 to 2^63 - 1)")
]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="experiments to skip (0 to 2^63 - 1)")]


def integer_pattern(limit: int) -> str:
    """A regular expression for the decimal integers 1 to `limit` (leading zeros allowed), ungrouped."""
    digits = str(limit)
    shorter = f"[1-9][0-9]{{0,{len(digits) - 2}}}" if len(digits) > 1 else None
    same_length = []
    for i, digit in enumerate(digits):
        rest = len(digits) - i - 1
        low = "1" if i == 0 else "0"
        if int(digit) > int(low):
            tail = f"[0-9]{{{rest}}}" if rest else ""
            same_length.append(f"{digits[:i]}[{low}-{int(digit) - 1}]{tail}")
    same_length.append(digits)
    return "0*(?:" + "|".join(filter(None, [shorter, *same_length])) + ")"


def json_errors(value: Any, loc: list[str | int]) -> list[FieldError]:
    """Every place in a parsed JSON document that the database cannot store: text with NUL characters
    or lone surrogates (keys too), and numbers that are not finite. `loc` locates the document."""
    errors: list[FieldError] = []
    if isinstance(value, str):
        problem = text_problem(value)
        if problem is not None:
            errors.append({"type": "string_unstorable", "loc": loc, "msg": f"the text {problem}"})
    elif isinstance(value, float) and not math.isfinite(value):
        message = f"{value} is not a finite number (a JSON number beyond about 1.8e308, or NaN or Infinity)"
        errors.append({"type": "finite_number", "loc": loc, "msg": message})
    elif isinstance(value, Mapping):
        for key, item in value.items():
            problem = text_problem(str(key))
            if problem is not None:
                errors.append({"type": "string_unstorable", "loc": [*loc, key], "msg": f"the key {problem}"})
            errors.extend(json_errors(item, [*loc, key]))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            errors.extend(json_errors(item, [*loc, index]))
    return errors


_SURROGATE = re.compile("[\ud800-\udfff]")


def printable(value: Any) -> Any:
    """`value` with every lone surrogate in its strings (keys too) written as `\\udXXX`, so it encodes as UTF-8."""
    if isinstance(value, str):
        return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", value)
    if isinstance(value, Mapping):
        return {printable(k): printable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [printable(item) for item in value]
    return value
