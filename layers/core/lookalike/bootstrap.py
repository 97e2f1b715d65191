"""Composition root: the only module that knows which concrete stores are in use.

Settings pick the adapters: with no endpoints configured, the embedded stores in the data
directory (Milvus Lite, SQLite, a folder as the bucket); otherwise Milvus/Zilliz, OpenSearch
and S3. Heavy things (the ONNX session, clients, the secret) are built once per process.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

from lookalike.embedding import FeatureModel
from lookalike.ports import HashIndex, ObjectStore, VectorIndex
from lookalike.services import IndexService, SearchService
from lookalike.settings import Settings
from lookalike.signatures import SignatureExtractor

logger = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    indexer: IndexService
    searcher: SearchService
    objects: ObjectStore
    hashes: HashIndex
    vectors: VectorIndex

    def close(self) -> None:
        self.hashes.close()
        self.vectors.close()


def build_services(
    settings: Settings, *, objects: ObjectStore | None = None, extractor: SignatureExtractor | None = None
) -> Services:
    """Wire the services for ``settings``.

    ``objects`` and ``extractor`` override the object store and the feature model, so that
    tests and the evaluation can share one model session across many galleries.
    """
    if settings.embedded:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    extractor = extractor or SignatureExtractor(FeatureModel(settings.model_path, threads=settings.model_threads))
    hashes = build_hash_index(settings)
    vectors = build_vector_index(settings, extractor.model.dimension)
    objects = objects or build_object_store(settings)
    indexer = IndexService(extractor, hashes, vectors, bucket=settings.bucket)
    searcher = SearchService(
        extractor,
        hashes,
        vectors,
        bucket=settings.bucket,
        owner_prefix=settings.owner_prefix,
        defaults=settings.thresholds,
        objects=objects,
    )
    return Services(settings, indexer, searcher, objects, hashes, vectors)


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


def build_vector_index(settings: Settings, dimension: int) -> VectorIndex:
    from lookalike.adapters.milvus import MilvusVectorIndex

    if settings.milvus_uri is None:
        return MilvusVectorIndex(
            uri=str(settings.milvus_lite_path), collection=settings.milvus_collection, dimension=dimension
        )
    return MilvusVectorIndex(
        uri=settings.milvus_uri,
        token=milvus_token(settings),
        collection=settings.milvus_collection,
        dimension=dimension,
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
