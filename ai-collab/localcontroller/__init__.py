"""The local controller (Sedna's LC), run by each edge node's EdgeCore as an extension.

Workers post their status to ``http://127.0.0.1:<port>/sedna/workers/{name}/info`` (the
``LC_SERVER`` the global manager gives them; Sedna's port 9100 by default). The LC keeps each
worker's latest report in ``<data dir>/localcontroller.db`` and sends each joint inference
service's summary over this node's workers to the global manager through the node's durable
outbox (see :mod:`.server`)::

    EdgeCore(data_dir, cloud_url=..., extensions=[local_controller(port=9100)])
"""

from __future__ import annotations

from .messages import JOINT_INFERENCE, LC_KEY, LC_KIND, SOURCE, report_key
from .server import (
    DEFAULT_PORT,
    MAX_BODY,
    LocalController,
    joint_inference_summary,
    local_controller,
)
from .store import ReportStore

__all__ = [
    "DEFAULT_PORT",
    "JOINT_INFERENCE",
    "LC_KEY",
    "LC_KIND",
    "MAX_BODY",
    "SOURCE",
    "LocalController",
    "ReportStore",
    "joint_inference_summary",
    "local_controller",
    "report_key",
]
