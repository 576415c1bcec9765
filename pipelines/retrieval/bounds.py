"""The bounds of a retrieval query, shared by `pipelines.search` and the Serve app's `/v1/search`.

    check_text(text)   # QueryProblem("text", "…") when empty, blank or longer than MAX_QUERY_CHARS
    check_k(k)         # QueryProblem("k", "…") outside 1..MAX_K

A `QueryProblem` names the field; the CLI turns it into a usage error (exit 2), the HTTP API into a 422.
"""

from __future__ import annotations

MAX_QUERY_CHARS = 1000
"""Characters of a text query (the text tower reads at most its `max_length` tokens of it anyway)."""
MAX_K = 1000
"""Neighbours one query may ask for."""


class QueryProblem(ValueError):
    """A query that cannot be searched: `field` ("text", "k", "ecg") and a message naming it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def check_text(text: str) -> str:
    """`text` itself when it is a query the index can take."""
    if not text.strip():
        raise QueryProblem("text", "is empty; give a sentence to search for")
    if len(text) > MAX_QUERY_CHARS:
        raise QueryProblem("text", f"{len(text):,} characters; the limit is {MAX_QUERY_CHARS:,}")
    return text


def check_k(k: int) -> int:
    """`k` itself when 1 ≤ k ≤ MAX_K."""
    if not 1 <= k <= MAX_K:
        raise QueryProblem("k", f"{k} neighbours; ask for 1 to {MAX_K}")
    return k
