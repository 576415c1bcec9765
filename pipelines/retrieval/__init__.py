"""ECG↔text retrieval: an embedding index built from scoring output, and the bounds of a query.

    from pipelines.retrieval import EmbeddingIndex, MAX_K, MAX_QUERY_CHARS, check_k, check_text
"""

from pipelines.retrieval.bounds import MAX_K, MAX_QUERY_CHARS, QueryProblem, check_k, check_text
from pipelines.retrieval.index import EXACT_LIMIT, EmbeddingIndex, HNSWParameters, IndexModelMismatch

__all__ = [
    "EXACT_LIMIT",
    "MAX_K",
    "MAX_QUERY_CHARS",
    "EmbeddingIndex",
    "HNSWParameters",
    "IndexModelMismatch",
    "QueryProblem",
    "check_k",
    "check_text",
]
