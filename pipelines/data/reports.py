"""Report text: the cleaning MERL and MELP apply, shared by every source."""

from __future__ import annotations

import re
from collections.abc import Iterable

_EKG = re.compile(r"\bekg\b")
_SPACES = re.compile(r"\s+")
_REPEATED_STOPS = re.compile(r"(\s*\.\s*)+")


def clean_report(text: str | None) -> str:
    """Lower-case, "EKG" → "ECG", decorations ("***", "==", "--") trimmed, whitespace collapsed."""
    if not text:
        return ""
    text = _SPACES.sub(" ", text.lower()).strip(" *=-")
    text = _EKG.sub("ecg", text)
    return _REPEATED_STOPS.sub(". ", text).strip()


def join_statements(statements: Iterable[str | None]) -> str:
    """Join report statements with ". " (MERL's MIMIC-IV-ECG convention), skipping empty ones."""
    parts = [clean_report(s).rstrip(". ") for s in statements if s is not None and str(s).strip()]
    parts = [p for p in parts if p]
    return ". ".join(parts) + "." if parts else ""


def word_count(report: str) -> int:
    return len(re.findall(r"[a-z0-9]+", report))
