"""Report statements from a label system's codes through the concept table, for archives that carry codes but
no label table of their own (CinC/CPSC WFDB folders: SNOMED CT codes in `#Dx:`).

    statements_of("snomed")["164889003"]       # "atrial fibrillation"
"""

from __future__ import annotations

from pipelines.labels.concepts import concept_names_by_code


def statements_of(system: str) -> dict[str, str]:
    """Code of `system` → its English statement: the name of the concept it maps to (the names joined with ". "
    for a code the table lists as shared by several). Codes not in the table are absent."""
    return {code: ". ".join(names) for code, names in concept_names_by_code(system).items()}
