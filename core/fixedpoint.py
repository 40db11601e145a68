"""Exact decimal-string <-> fixed-point int64 conversion (scale ``FIXED_SCALE``).

The exchange sends prices and quantities as decimal text (``"42999.80"``,
``"0.00012000"``). They become ``int64`` counts of 1e-8 without ever being a
float, so that equal prices are equal keys and sums are exact.

Accepted text: optional digits, optional ``.`` and up to 8 fraction digits
(more fraction digits are accepted only if the extra ones are zeros), no sign
unless ``allow_negative``. Anything else raises ``FixedPointError`` (Python)
or returns ``PARSE_ERROR`` (numba kernel).
"""

from __future__ import annotations

from decimal import Decimal

import numba as nb
import numpy as np

from core.errors import FixedPointError
from core.records import FIXED_DECIMALS, FIXED_SCALE, INT64_MAX

PARSE_ERROR = np.int64(-(2**63))  # sentinel returned by the numba parser
_POW10 = tuple(10**i for i in range(FIXED_DECIMALS + 1))


def to_fixed(text: str | bytes, *, allow_negative: bool = False) -> int:
    """Parse decimal text into fixed point. ``"1.5"`` -> ``150_000_000``."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        text = bytes(text).decode("ascii", "replace")
    s = text
    neg = False
    if s[:1] == "-":
        if not allow_negative:
            raise FixedPointError(f"negative value not allowed: {text!r}")
        neg, s = True, s[1:]
    whole, dot, frac = s.partition(".")
    if (not whole and not frac) or (dot and not frac and not whole):
        raise FixedPointError(f"not a decimal number: {text!r}")
    if (whole and not whole.isdigit()) or (frac and not frac.isdigit()) or not whole.isascii() or not frac.isascii():
        raise FixedPointError(f"not a decimal number: {text!r}")
    if len(frac) > FIXED_DECIMALS:
        if frac[FIXED_DECIMALS:].strip("0"):
            raise FixedPointError(f"more than {FIXED_DECIMALS} decimals: {text!r}")
        frac = frac[:FIXED_DECIMALS]
    value = int(whole or "0") * FIXED_SCALE + int(frac or "0") * _POW10[FIXED_DECIMALS - len(frac)]
    if value > INT64_MAX:
        raise FixedPointError(f"out of range for fixed point int64: {text!r}")
    return -value if neg else value


def from_fixed(value: int, *, decimals: int = FIXED_DECIMALS) -> str:
    """Format fixed point as decimal text with ``decimals`` fraction digits.

    ``from_fixed(150_000_000)`` -> ``"1.50000000"``; ``decimals=2`` -> ``"1.50"``.
    Digits dropped by a smaller ``decimals`` must be zero (no silent rounding).
    """
    value = int(value)
    sign = "-" if value < 0 else ""
    whole, frac = divmod(abs(value), FIXED_SCALE)
    frac_text = f"{frac:0{FIXED_DECIMALS}d}"
    if decimals < FIXED_DECIMALS:
        if frac_text[decimals:].strip("0"):
            raise FixedPointError(f"{value} has more than {decimals} decimals")
        frac_text = frac_text[:decimals]
    return f"{sign}{whole}.{frac_text}" if decimals > 0 else f"{sign}{whole}"


def to_decimal(value: int) -> Decimal:
    """Fixed point to an exact ``Decimal``."""
    return Decimal(int(value)).scaleb(-FIXED_DECIMALS)


def from_decimal(value: Decimal) -> int:
    """An exact ``Decimal`` (at most 8 decimals) to fixed point."""
    scaled = value.scaleb(FIXED_DECIMALS)
    if scaled != scaled.to_integral_value():
        raise FixedPointError(f"more than {FIXED_DECIMALS} decimals: {value}")
    return int(scaled)


def decimals_of(text: str) -> int:
    """Significant fraction digits of a tick/step string: ``"0.01000000"`` -> 2."""
    _, _, frac = text.partition(".")
    return len(frac.rstrip("0"))


@nb.njit(cache=True, nogil=True)
def parse_fixed_bytes(buf, start, end):
    """Parse ASCII decimal ``buf[start:end]`` (uint8 array) to fixed point.

    Returns ``PARSE_ERROR`` on anything but ``digits[.digits]`` with at most 8
    significant fraction digits, or on overflow. No sign is accepted: market
    prices and quantities are never negative.
    """
    if end <= start:
        return PARSE_ERROR
    value = np.int64(0)
    i = start
    ndig = 0
    while i < end:
        c = buf[i]
        if c == 46:  # '.'
            break
        if c < 48 or c > 57:
            return PARSE_ERROR
        if value > (INT64_MAX - 9) // 10:
            return PARSE_ERROR
        value = value * 10 + (c - 48)
        ndig += 1
        i += 1
    frac = np.int64(0)
    nfrac = 0
    if i < end:  # at '.'
        i += 1
        if i == end and ndig == 0:
            return PARSE_ERROR
        while i < end:
            c = buf[i]
            if c < 48 or c > 57:
                return PARSE_ERROR
            if nfrac < 8:
                frac = frac * 10 + (c - 48)
                nfrac += 1
            elif c != 48:
                return PARSE_ERROR
            i += 1
    elif ndig == 0:
        return PARSE_ERROR
    while nfrac < 8:
        frac *= 10
        nfrac += 1
    if value > (INT64_MAX - frac) // 100000000:
        return PARSE_ERROR
    return value * 100000000 + frac
