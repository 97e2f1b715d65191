"""Scheduled reconcile (EventBridge) → lookalike.lifecycle.reconcile, within the Lambda's time limit."""

from __future__ import annotations

import time
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from aws_lambda_powertools.utilities.typing import LambdaContext

from lookalike.bootstrap import services_from_env
from lookalike.lifecycle.reconcile import reconcile

logger = Logger()
copy_config_to_registered_loggers(source_logger=logger, include={"lookalike"})

#: Time kept for the last repair batch (ten images embedded) and saving the state: a fifth of
#: the invocation's time, at most this.
SAFETY_MARGIN_SECONDS = 60


@logger.inject_lambda_context
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    remaining = context.get_remaining_time_in_millis() / 1000
    deadline = time.monotonic() + remaining - min(SAFETY_MARGIN_SECONDS, remaining / 5)
    report = reconcile(services_from_env(), deadline=deadline).to_dict()
    summary = {name: value for name, value in report.items() if name != "findings"}
    message = "reconcile finished" if report["complete"] else "reconcile paused at its time budget"
    logger.info(message, extra={**summary, "findings": report["findings"][:100]})
    return summary
