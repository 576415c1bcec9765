"""Report statements from a label system's codes through the concept table, for archives that carry codes but
no label table of their own (CinC/CPSC WFDB folders: SNOMED CT codes in `#Dx:`).

    statements_of("snomed")["164889003"]       # "atrial fibrillation"
"""

from __future__ import annotations

from pipelines.labels.concepts import SYSTEMS, concepts


def statements_of(system: str) -> dict[str, str]:
    """Code of `system` → its English statement: the name of the concept it maps to (the names joined with ". "
    for a code the table lists as shared by several). Codes not in the table are absent."""
    if system not in SYSTEMS:
        raise ValueError(f"unknown label system {system!r}: use one of {', '.join(SYSTEMS)}")
    names: dict[str, list[str]] = {}
    for concept in concepts().values():
        for code in concept.codes[system]:
            names.setdefault(code, []).append(concept.name)
    return {code: ". ".join(found) for code, found in names.items()}
