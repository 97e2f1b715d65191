"""The edges: where events and requests become service calls.

- :mod:`lookalike.edges.upload_events`: an SQS batch of S3 notifications → the index service.
- :mod:`lookalike.edges.http_api`: HTTP API requests (API Gateway v2 events) → the search service.

Both are shared by the Lambda handlers in ``functions/`` and the local twin (``lookalike serve``).
"""
