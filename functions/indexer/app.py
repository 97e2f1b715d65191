"""S3 upload notifications (through SQS) → the index service; see lookalike.edges.upload_events."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from aws_lambda_powertools.utilities.typing import LambdaContext

from lookalike.bootstrap import services_from_env
from lookalike.edges.upload_events import handle_upload_events

logger = Logger()
tracer = Tracer()
metrics = Metrics()
copy_config_to_registered_loggers(source_logger=logger, include={"lookalike"})


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics(capture_cold_start_metric=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    # The services (model session, store clients) are built on the first event, once per container.
    return dict(handle_upload_events(event, services_from_env(), context=context, metrics=metrics))
