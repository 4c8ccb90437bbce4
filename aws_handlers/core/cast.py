"""Strict text -> typed Arrow conversion, driven by the contract. Never coerces silently.

Each type has one definition of what is valid (a Python function used on the slow path) and a
vectorized Arrow fast path that must agree with it on valid input. The fast path handles the
common case; as soon as it finds anything it cannot vouch for, the column chunk is redone value
by value so that every bad value is reported with its exact row.
"""
from __future__ import annotations

import re
from datetime import datetime
from functools import lru_cache
from decimal import Decimal, InvalidOperation

import pyarrow as pa
import pyarrow.compute as pc

from .contract import Column, Contract

INT_PATTERN = r"^[+-]?[0-9]+$"
DECIMAL_PATTERN = r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)$"
_INT_RE = re.compile(INT_PATTERN)
_DECIMAL_RE = re.compile(DECIMAL_PATTERN)
INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
# strptime is lenient (blanks, any Unicode digit); a value must first match its format exactly.
# Padding stays optional (%m matches "5" and "05"): US exports write 5/14/1987.
_DIRECTIVE_PATTERNS = {
    "Y": "[0-9]{4}", "y": "[0-9]{2}", "m": "(0?[1-9]|1[0-2])", "d": "(0?[1-9]|[12][0-9]|3[01])",
    "H": "([01]?[0-9]|2[0-3])", "I": "(0?[1-9]|1[0-2])", "M": "[0-5]?[0-9]", "S": "([0-5]?[0-9]|6[01])",
    "f": "[0-9]{1,6}", "j": "[0-9]{1,3}", "p": "(AM|PM|am|pm)", "b": "[A-Za-z]{3}", "B": "[A-Za-z]{3,9}",
    "a": "[A-Za-z]{3}", "A": "[A-Za-z]{6,9}", "z": "[+-][0-9]{4}", "%": "%",
}


@lru_cache(maxsize=None)
def format_pattern(fmt: str) -> str:
    """An anchored regex (Python re and RE2 alike) for the exact text a strptime format allows."""
    out, i = [], 0
    while i < len(fmt):
        if fmt[i] == "%" and i + 1 < len(fmt):
            directive = fmt[i + 1]
            if directive not in _DIRECTIVE_PATTERNS:
                raise ValueError(f"unsupported strptime directive %{directive} in {fmt!r}")
            out.append(_DIRECTIVE_PATTERNS[directive])
            i += 2
        else:
            out.append(re.escape(fmt[i]))
            i += 1
    return "^" + "".join(out) + "$"


class BadValue(Exception):
    pass


def _describe_type(column: Column) -> str:
    if column.type in ("date", "timestamp"):
        return f"a {column.type} in format {column.format}"
    return f"an {column.type}" if column.type[0] in "aeiou" else f"a {column.type}"


def convert_value(text: str, column: Column, contract: Contract):
    """The definition of validity for one value (never None: NULLs are decided by the reader)."""
    ctype = column.type
    if ctype == "string":
        size = len(text.encode("utf-8"))
        if column.max_bytes is not None and size > column.max_bytes:
            raise BadValue(f"value is {size} bytes, over the column's limit of {column.max_bytes} bytes")
        return text
    if ctype in INT_RANGES:
        if not _INT_RE.fullmatch(text):
            raise BadValue(f"is not {_describe_type(column)}")
        number = int(text)
        low, high = INT_RANGES[ctype]
        if not low <= number <= high:
            raise BadValue(f"is out of range for {ctype} ({low}..{high})")
        return number
    if ctype == "boolean":
        lowered = text.lower()
        if lowered in contract.true_values:
            return True
        if lowered in contract.false_values:
            return False
        raise BadValue(f"is not a boolean (accepted: {list(contract.true_values)} / {list(contract.false_values)})")
    if ctype in ("date", "timestamp"):
        if not re.fullmatch(format_pattern(column.format or ""), text):
            raise BadValue(f"is not {_describe_type(column)}")
        try:
            parsed = datetime.strptime(text, column.format or "")
        except ValueError:
            raise BadValue(f"is not {_describe_type(column)}") from None
        return parsed.date() if ctype == "date" else parsed
    precision, scale = column.decimal_precision_scale  # type: ignore[misc]
    if not _DECIMAL_RE.fullmatch(text):
        raise BadValue(f"is not a decimal({precision},{scale})")
    try:
        value = Decimal(text)
        quantized = value.quantize(Decimal(1).scaleb(-scale))
    except InvalidOperation:
        raise BadValue(f"does not fit decimal({precision},{scale})") from None
    if quantized != value:
        raise BadValue(f"has more than {scale} decimal places (decimal({precision},{scale}); rounding would change it)")
    if len(quantized.as_tuple().digits) > precision and quantized != 0:
        raise BadValue(f"has more than {precision - scale} digits before the point (decimal({precision},{scale}))")
    return quantized


def _fast_path(strings: pa.Array, column: Column, contract: Contract) -> pa.Array | None:
    """Vectorized conversion, or None when any value needs the exact (slow) path."""
    ctype = column.type
    non_null = pc.is_valid(strings)
    try:
        if ctype == "string":
            if column.max_bytes is not None and len(strings):
                too_long = pc.greater(pc.binary_length(strings), column.max_bytes)
                if pc.any(too_long).as_py():
                    return None
            return strings
        if ctype in INT_RANGES or column.decimal_precision_scale:
            pattern = INT_PATTERN if ctype in INT_RANGES else DECIMAL_PATTERN
            ok = pc.match_substring_regex(strings, pattern)
            if not pc.all(pc.or_kleene(ok, pc.invert(non_null))).as_py():
                return None
            # Arrow refuses a leading '+', Python accepts it; drop it so both agree.
            cleaned = pc.replace_substring_regex(strings, r"^\+", "")
            return pc.cast(cleaned, column.arrow_type)  # overflow / rescale loss raise -> slow path
        if ctype == "boolean":
            lowered = pc.utf8_lower(strings)
            is_true = pc.is_in(lowered, pa.array(list(contract.true_values)))
            is_false = pc.is_in(lowered, pa.array(list(contract.false_values)))
            if not pc.all(pc.or_kleene(pc.or_(is_true, is_false), pc.invert(non_null))).as_py():
                return None
            return pc.if_else(non_null, is_true, pa.scalar(None, pa.bool_()))
        if ctype in ("date", "timestamp"):
            shaped = pc.match_substring_regex(strings, format_pattern(column.format))
            if not pc.all(pc.or_kleene(shaped, pc.invert(non_null))).as_py():
                return None
            # Seconds: Arrow has no %f (such formats fall through to Python) and %S of a [us]
            # timestamp would print fractions, so the round trip below could never match.
            parsed = pc.strptime(strings, format=column.format, unit="s", error_is_null=True)
            if pc.sum(pc.is_valid(parsed)).as_py() != pc.sum(non_null).as_py():
                return None  # e.g. %f, which Arrow's strptime lacks: let Python decide
            # glibc's strptime rolls 2021-02-30 forward to March and skips leading blanks; only a
            # value that formats back to exactly its text is vouched for here, the rest go to Python.
            round_trip = pc.strftime(parsed, format=column.format)
            if not pc.all(pc.or_kleene(pc.equal(round_trip, strings), pc.invert(non_null))).as_py():
                return None
            return pc.cast(parsed, column.arrow_type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    return None


def convert_column(values: list[str | None], column: Column, contract: Contract) -> tuple[pa.Array, dict[int, str]]:
    """Convert one column chunk. Returns the typed array (bad rows -> null) and {row: reason}."""
    strings = pa.array(values, type=pa.string())
    fast = _fast_path(strings, column, contract)
    if fast is not None:
        return fast, {}
    converted = []
    bad: dict[int, str] = {}
    for i, text in enumerate(values):
        if text is None:
            converted.append(None)
            continue
        try:
            converted.append(convert_value(text, column, contract))
        except BadValue as exc:
            bad[i] = str(exc)
            converted.append(None)
    return pa.array(converted, type=column.arrow_type), bad
