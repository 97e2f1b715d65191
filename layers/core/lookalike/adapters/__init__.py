"""Concrete stores behind ``lookalike.ports``; only ``lookalike.bootstrap`` picks among them.

- ``milvus.MilvusVectorIndex``: vectors in Milvus / Zilliz Cloud, or Milvus Lite in a ``.db`` file.
- ``opensearch_hashes.OpenSearchHashIndex``: pHash segments in OpenSearch (managed or Serverless);
  ``opensearch_hashes.opensearch_client`` builds an unsigned or SigV4-signed client.
- ``sqlite_hashes.SqliteHashIndex``: the same in one SQLite file (embedded).
- ``s3_objects.S3ObjectStore``: the upload bucket; ``local_objects.LocalObjectStore``: a folder.

Each adapter takes its client as an argument, so tests pass real local ones; import the
module you need (the client libraries are heavy, and this package imports none of them).
"""
