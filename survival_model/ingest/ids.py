"""Normalising source identifiers so image folders and clinical rows of one patient meet.

Real sources write one id several ways (``010005`` in one file, ``10005`` or ``10005.0`` in another);
each institution declares the steps that make them equal. Steps apply in the declared order, after the
one that always applies: Unicode normalisation to NFC (a folder name written by macOS is often NFD, so
``Müller`` in a folder and in a table are different code points for the same text).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence

from survival_model.config import IdStep


def normalise_id(raw: object, steps: Sequence[IdStep]) -> str | None:
    """The normalised id, or ``None`` when the value is empty."""
    if raw is None or (isinstance(raw, float) and math.isnan(raw)):
        return None
    if isinstance(raw, float) and raw.is_integer():
        raw = int(raw)
    text = unicodedata.normalize("NFC", str(raw).replace("\xa0", " "))
    for step in steps:
        if step == "strip":
            text = text.strip()
        elif step == "upper":
            text = text.upper()
        elif step == "lower":
            text = text.lower()
        elif step == "int_like":
            text = re.sub(r"^(-?\d+)\.0+$", r"\1", text.strip())
        elif step == "digits_only":
            text = re.sub(r"\D", "", text)
        elif step == "strip_leading_zeros":
            text = text.lstrip("0") or ("0" if text else "")
    return text or None
