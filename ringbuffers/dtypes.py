"""What a ring needs to know about a record dtype: its fingerprint and a description.

The ring stores ``dtype_fingerprint(dtype)`` in its header at create and
compares it at attach, so two processes built with different record layouts
refuse to talk rather than misread each other. Nothing here knows the
application's dtypes (``core.records`` declares those).
"""

from __future__ import annotations

import hashlib

import numpy as np

_FINGERPRINT_MASK = (1 << 63) - 1  # fits a non-negative int64 header word


def dtype_fingerprint(dt: np.dtype) -> int:
    """A stable 63-bit fingerprint of a structured dtype's names, formats, shapes, offsets and itemsize."""
    desc = repr([(n, dt.fields[n][0].str, dt.fields[n][0].shape, dt.fields[n][1]) for n in dt.names])
    desc += f"|{dt.itemsize}"
    digest = hashlib.blake2b(desc.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & _FINGERPRINT_MASK


def describe_dtype(dt: np.dtype, max_fields: int = 4) -> str:
    """A short description for error messages: ``dt.metadata["name"]`` if the declarer set one, plus its fields."""
    names = list(dt.names or ())
    shown = names if len(names) <= max_fields else names[: max_fields - 1] + ["...", names[-1]]
    label = (dt.metadata or {}).get("name")
    fields = f"({', '.join(shown)}) {len(names)} fields"
    return f"{label} {fields}" if label else fields
