"""One error hierarchy for lookalike.

Every error carries a machine-readable ``code``; the edges (HTTP API, indexer, CLI) translate
them in one place each. Nothing else may escape the core: adapters wrap their clients'
exceptions in :class:`StoreUnavailable` with ``raise ... from exc``.
"""

from __future__ import annotations

from typing import Literal

RejectionReason = Literal[
    "empty",
    "too_large",
    "not_an_image",
    "unsupported_format",
    "truncated",
    "too_many_pixels",
    "too_small",
    "corrupt",
]


class LookalikeError(Exception):
    """Base of every error lookalike raises on purpose."""

    code: str = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ImageRejected(LookalikeError):
    """The bytes are not an image lookalike accepts; ``reason`` says why, for machines.

    A rejected image is final: retrying the same bytes gives the same answer.
    """

    code = "image_rejected"

    def __init__(self, reason: RejectionReason, message: str) -> None:
        super().__init__(message)
        self.reason: RejectionReason = reason


class InvalidRequest(LookalikeError):
    """A request parameter is out of range or malformed; ``parameter`` names it."""

    code = "invalid_request"

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"{parameter}: {message}")
        self.parameter = parameter


class NotFound(LookalikeError):
    """No such image for this owner (another owner's image is reported the same way)."""

    code = "not_found"


class StoreUnavailable(LookalikeError):
    """A store (Milvus, OpenSearch, SQLite, S3) failed; the operation may be retried."""

    code = "store_unavailable"


class ConfigurationError(LookalikeError):
    """A setting is missing or invalid; raised once, at start, naming the setting."""

    code = "configuration_error"


class ModelError(LookalikeError):
    """The feature model is missing, does not match its pinned checksum, or cannot run."""

    code = "model_error"
