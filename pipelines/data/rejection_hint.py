"""The end of a prepare run: when most records fail for one reason that an option changes, say which.

A CinC-style archive under the defaults rejects every record as "empty report" (its headers hold only
`#Age`, `#Sex`, `#Dx`); the run succeeds with 0 kept, and this hint names `--min-report-words 0`.
"""

from __future__ import annotations

DOMINANT_SHARE = 0.5
"""A reason kind is dominant when it rejected more than this share of the records in."""

LABEL_REPORT_SOURCES = ("ptbxl", "synthetic")
"""Sources whose `--report labels` builds reports from label descriptions (WFDB folders have no label
table; MIMIC-IV-ECG's reports are its machine statements)."""


def dominant_rejection_hint(manifest: dict) -> str | None:
    """One line naming the option that changes the most common rejection, when that rejection took more
    than half of the records in and such an option exists; None otherwise."""
    reasons = manifest["rejections_by_reason"]
    records_in = manifest["records_in"]
    if not reasons or not records_in:
        return None
    kind, count = max(reasons.items(), key=lambda item: item[1])
    advice = _advice(kind, manifest)
    if count / records_in <= DOMINANT_SHARE or advice is None:
        return None
    return f"{count:,} of {records_in:,} records were rejected as {kind!r}: {advice}"


def _advice(kind: str, manifest: dict) -> str | None:
    if kind in ("empty report", "report too short"):
        advice = "--min-report-words 0 keeps records whatever their report (as for an evaluation set)"
        if manifest["source"] in LABEL_REPORT_SOURCES and manifest.get("report") == "raw":
            advice += ", and --report labels writes reports from the label descriptions"
        return advice
    required = manifest["preprocessing"]["min_leads"]
    if kind == "too few leads" and required > 1:
        return f"--min-leads {required} asks for {required} usable standard leads; a lower --min-leads keeps them"
    if kind == "no header":
        return (
            "these signal files have no WFDB header (.hea) beside them; --source wfdb reads records with "
            "headers, such as the CinC 2020/2021 release of CPSC2018 rather than its own .mat + REFERENCE.csv"
        )
    return None
