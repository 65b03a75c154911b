"""Component logs (stage progress among them) in the Prefect flow run's logs.

Components log through `logging` under `components.*` and never import prefect. Prefect's own
`PREFECT_LOGGING_EXTRA_LOGGERS` would attach its API handler too, but leaves those loggers at the root's
WARNING level, so their INFO lines (progress) were dropped; and it depends on each worker's
environment. Here the flows attach the handler themselves, in every process that runs a flow.
"""

from __future__ import annotations

import logging

from prefect.context import FlowRunContext, TaskRunContext
from prefect.logging.handlers import APILogHandler

# The components, and the flows' own plain-logging modules (runner.py).
FORWARDED_LOGGERS = ("components", "flows")


class _RunLogHandler(APILogHandler):
    """Prefect's API log handler, silent outside a flow or task run (a component's helper thread has no
    run context; that is not worth a warning per line)."""

    def emit(self, record: logging.LogRecord) -> None:
        if FlowRunContext.get() is not None or TaskRunContext.get() is not None:
            super().emit(record)


def forward_component_logs(level: int = logging.INFO) -> None:
    """Send `components.*` and `flows.*` records at `level` and up to the current flow run's logs (idempotent)."""
    for name in FORWARDED_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET or logger.level > level:
            logger.setLevel(level)
        if not any(isinstance(handler, _RunLogHandler) for handler in logger.handlers):
            logger.addHandler(_RunLogHandler())
