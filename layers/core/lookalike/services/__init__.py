"""The two things lookalike does, written against the ports: index images, search them."""

from lookalike.services.indexing import IndexOutcome, IndexService
from lookalike.services.search import Hit, QueryInfo, SearchResult, SearchService

__all__ = ["Hit", "IndexOutcome", "IndexService", "QueryInfo", "SearchResult", "SearchService"]
