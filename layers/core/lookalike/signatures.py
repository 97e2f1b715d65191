"""Bytes in, signatures out: the one step everything in lookalike starts from.

decode (imaging) → trim borders (borders) → pHash (hashing) and feature vector (embedding).
The same function serves the indexer, the search API, the CLI and the evaluation, so an
image is always decoded, trimmed and resized identically on both sides of a comparison.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lookalike.borders import TrimKind, Trimmed, trim_borders
from lookalike.errors import ImageRejected
from lookalike.hashing import PHash, phash
from lookalike.identity import content_sha256
from lookalike.imaging import DecodeLimits, decode

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from lookalike.embedding import FeatureModel


@dataclass(frozen=True, slots=True)
class Signatures:
    """Everything lookalike compares images by, computed from one upload."""

    sha256: str
    size: int
    format: str
    width: int
    height: int
    trim: TrimKind
    phash: PHash
    vector: npt.NDArray[np.float32]
    model: str


class SignatureExtractor:
    """Computes :class:`Signatures`; holds the feature model, which is built once."""

    def __init__(self, model: FeatureModel, limits: DecodeLimits | None = None) -> None:
        self.model = model
        self.limits = limits or DecodeLimits()

    def extract(self, data: bytes) -> Signatures:
        """Signatures of one image; raises ImageRejected for anything that is not one."""
        result = self.extract_many([data])[0]
        if isinstance(result, ImageRejected):
            raise result
        return result

    def extract_many(self, blobs: Sequence[bytes]) -> list[Signatures | ImageRejected]:
        """Signatures of many images, embedded together (one batched model run).

        A rejected image takes its ImageRejected in its place and does not affect the others.
        """
        prepared: list[tuple[int, bytes, str, int, int, Trimmed] | ImageRejected] = []
        for data in blobs:
            try:
                decoded = decode(data, self.limits)
            except ImageRejected as rejection:
                prepared.append(rejection)
                continue
            trimmed = trim_borders(decoded.image)
            prepared.append((len(data), data, decoded.format, decoded.width, decoded.height, trimmed))

        accepted = [p for p in prepared if not isinstance(p, ImageRejected)]
        vectors = self.model.embed_batch([p[5].image for p in accepted])
        results: list[Signatures | ImageRejected] = []
        row = 0
        for item in prepared:
            if isinstance(item, ImageRejected):
                results.append(item)
                continue
            size, data, fmt, width, height, trimmed = item
            results.append(
                Signatures(
                    sha256=content_sha256(data),
                    size=size,
                    format=fmt,
                    width=width,
                    height=height,
                    trim=trimmed.kind,
                    phash=phash(trimmed.image),
                    vector=vectors[row],
                    model=self.model.name,
                )
            )
            row += 1
        return results
