"""Composition root: the only module that knows which concrete stores are in use.

Settings pick the adapters: with no endpoints configured, the embedded stores in the data
directory (Milvus Lite, SQLite, a folder as the bucket); otherwise Milvus/Zilliz, OpenSearch
and S3. Heavy things (the ONNX session, clients, the secret) are built once per process.

The vector collection is named after the live model (``Settings.milvus_collection_for``). When
``LOOKALIKE_NEXT_MODEL_PATH`` is set, the indexer also writes the next model's vectors into that
model's own collection (:mod:`lookalike.lifecycle.dual_write`); searches read the live one only.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any

from lookalike.embedding import FeatureModel
from lookalike.errors import ConfigurationError
from lookalike.ports import HashIndex, ObjectStore, VectorIndex
from lookalike.services import IndexService, SearchService
from lookalike.settings import Settings, collection_for_model
from lookalike.signatures import SignatureExtractor

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NextModel:
    """The model a change is moving to: its extractor and its own vector collection."""

    extractor: SignatureExtractor
    vectors: VectorIndex


@dataclass
class Services:
    settings: Settings
    indexer: IndexService
    searcher: SearchService
    objects: ObjectStore
    hashes: HashIndex
    vectors: VectorIndex  # the live model's collection
    next_model: NextModel | None = None  # set while LOOKALIKE_NEXT_MODEL_PATH is

    def close(self) -> None:
        self.hashes.close()
        if self.next_model is not None:
            self.next_model.vectors.close()
        self.vectors.close()


def build_services(
    settings: Settings,
    *,
    objects: ObjectStore | None = None,
    extractor: SignatureExtractor | None = None,
    next_extractor: SignatureExtractor | None = None,
) -> Services:
    """Wire the services for ``settings``.

    ``objects``, ``extractor`` and ``next_extractor`` override the object store and the feature
    models, so that tests and the evaluation can share one model session across many galleries.
    """
    if settings.embedded:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    extractor = extractor or SignatureExtractor(FeatureModel(settings.model_path, threads=settings.model_threads))
    hashes = build_hash_index(settings)
    collection = settings.milvus_collection_for(extractor.model.name)
    vectors = build_vector_index(settings, extractor.model.dimension, collection)
    objects = objects or build_object_store(settings)
    next_model = build_next_model(settings, extractor, vectors, next_extractor)
    if next_model is None:
        indexer = IndexService(extractor, hashes, vectors, bucket=settings.bucket)
    else:
        from lookalike.lifecycle.dual_write import DualModelExtractor, DualWriteVectors

        dual = DualModelExtractor(extractor, next_model.extractor)
        both = DualWriteVectors(vectors, next_model.vectors, dual)
        indexer = IndexService(dual, hashes, both, bucket=settings.bucket)
    searcher = SearchService(
        extractor,
        hashes,
        vectors,
        bucket=settings.bucket,
        owner_prefix=settings.owner_prefix,
        defaults=settings.thresholds,
        objects=objects,
    )
    return Services(settings, indexer, searcher, objects, hashes, vectors, next_model)


def build_next_model(
    settings: Settings, live: SignatureExtractor, live_vectors: VectorIndex, extractor: SignatureExtractor | None
) -> NextModel | None:
    """The next model and its collection (always named after it), or None with no change under way."""
    if settings.next_model_path is None:
        return None
    extractor = extractor or SignatureExtractor(FeatureModel(settings.next_model_path, threads=settings.model_threads))
    collection = collection_for_model(extractor.model.name)
    if extractor.model.name == live.model.name or collection == settings.milvus_collection_for(live.model.name):
        raise ConfigurationError(
            f"LOOKALIKE_NEXT_MODEL_PATH names model {extractor.model.name!r}, whose collection {collection} is the "
            "live one: a next model needs a name of its own (the facts file beside it)"
        )
    # Milvus Lite allows one client per database file: the next collection shares the live one's.
    shared = getattr(live_vectors, "client", None) if settings.milvus_uri is None else None
    return NextModel(extractor, build_vector_index(settings, extractor.model.dimension, collection, client=shared))


@functools.cache
def services_from_env() -> Services:
    """The process-wide services of a Lambda container or a server, from the environment."""
    return build_services(Settings.from_env())


def build_hash_index(settings: Settings) -> HashIndex:
    if settings.opensearch_url is None:
        from lookalike.adapters.sqlite_hashes import SqliteHashIndex

        return SqliteHashIndex(settings.sqlite_path)
    from lookalike.adapters.opensearch_hashes import OpenSearchHashIndex, opensearch_client

    client = opensearch_client(settings.opensearch_url, auth=settings.opensearch_auth, region=settings.aws_region)
    index = OpenSearchHashIndex(client, settings.opensearch_index)
    index.ensure_index()
    return index


def build_vector_index(settings: Settings, dimension: int, collection: str, *, client: Any = None) -> VectorIndex:
    from lookalike.adapters.milvus import MilvusVectorIndex

    if client is not None:
        return MilvusVectorIndex(client, collection=collection, dimension=dimension)
    if settings.milvus_uri is None:
        return MilvusVectorIndex(uri=str(settings.milvus_lite_path), collection=collection, dimension=dimension)
    return MilvusVectorIndex(
        uri=settings.milvus_uri, token=milvus_token(settings), collection=collection, dimension=dimension
    )


def milvus_token(settings: Settings) -> str | None:
    """The Zilliz/Milvus token: from Secrets Manager (cached by Powertools) in the cloud."""
    if settings.milvus_token_secret_arn is None:
        return settings.milvus_token
    from aws_lambda_powertools.utilities.parameters import get_secret

    token = get_secret(settings.milvus_token_secret_arn, max_age=300)
    return token if isinstance(token, str) else token.decode()


def build_object_store(settings: Settings) -> ObjectStore:
    if settings.local_objects:
        from lookalike.adapters.local_objects import LocalObjectStore

        return LocalObjectStore(settings.objects_dir, bucket=settings.bucket)
    from lookalike.adapters.s3_objects import S3ObjectStore

    return S3ObjectStore(settings.bucket)
