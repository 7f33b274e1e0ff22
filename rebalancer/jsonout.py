"""Strict JSON: the one writer of every JSON file and every ``--json`` the project prints.

RFC 8259 has no NaN and no infinity; Python's :mod:`json` writes them as the bare words
``NaN`` and ``Infinity`` by default, which strict parsers (JavaScript's ``JSON.parse``, jq,
Go, Rust's serde) refuse. A figure that is missing or undefined is written as ``null``:
:func:`strict` maps every non-finite float (NaN, +-inf, numpy's included) to ``None``, numpy
scalars to Python numbers, tuples to lists, and :func:`dumps` then writes with
``allow_nan=False``, so a non-finite number that slipped past the mapping (inside an object
``default`` turned into something else) is an error, never a file a reader cannot parse.

Where a document gives infinity a meaning (no tax budget, no fee), the document says what its
``null`` means; the figure is never written as infinity.

:func:`loads_strict` is the matching reader, for tests and checks: it refuses ``NaN``,
``Infinity`` and ``-Infinity``.
"""
from __future__ import annotations

import json
import math
from typing import IO, Any, Callable

import numpy as np

__all__ = ["strict", "dumps", "dump", "loads_strict", "NonStrictJSON"]


class NonStrictJSON(ValueError):
    """A JSON text holds NaN, Infinity or -Infinity."""


def strict(x: Any) -> Any:
    """``x`` with every non-finite float replaced by ``None`` (recursively through dicts,
    lists and tuples), numpy scalars as Python ones and numpy arrays as lists."""
    if isinstance(x, float):  # np.float64 is a float too
        return float(x) if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: strict(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [strict(v) for v in x]
    if isinstance(x, np.ndarray):
        return [strict(v) for v in x.tolist()]
    if isinstance(x, np.generic):
        return strict(x.item())
    return x


def dumps(obj: Any, *, indent: int | None = 2, sort_keys: bool = False,
          default: Callable[[Any], Any] | None = None) -> str:
    """``obj`` as strict JSON text (see the module docstring)."""
    if default is not None:
        inner = default

        def default(o):  # noqa: F811 - what ``default`` makes is made strict too
            return strict(inner(o))
    return json.dumps(strict(obj), indent=indent, sort_keys=sort_keys, default=default, allow_nan=False)


def dump(obj: Any, f: IO[str], *, indent: int | None = 2, sort_keys: bool = False,
         default: Callable[[Any], Any] | None = None) -> None:
    """Write ``obj`` to the text file ``f`` as strict JSON."""
    f.write(dumps(obj, indent=indent, sort_keys=sort_keys, default=default))


def _refuse(word: str):
    raise NonStrictJSON(f"{word} is not JSON (RFC 8259 has no NaN or infinity)")


def loads_strict(text: str | bytes) -> Any:
    """Parse ``text``; raise :class:`NonStrictJSON` on NaN, Infinity or -Infinity."""
    return json.loads(text, parse_constant=_refuse)
