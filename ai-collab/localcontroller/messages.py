"""What the local controller sends the global manager (one place for both ends).

Each message is an ``update`` from source :data:`SOURCE` whose resource (and outbox key) is
``sedna/<ownerKind>/<namespace>/<ownerName>``, so only the owner's latest summary is pending;
its content is ``{ownerKind, namespace, ownerName, ownerInfo, workers}`` (``workers``: how many
worker reports the summary covers).

On start the LC also announces where it listens: key and resource :data:`LC_KEY`, content
``{"kind": "localcontroller", "url": "http://127.0.0.1:<port>"}`` (durable: the outbox keeps
the latest), so the GM can give this node's workers that ``LC_SERVER``.
"""

from __future__ import annotations

__all__ = ["JOINT_INFERENCE", "LC_KEY", "LC_KIND", "SOURCE", "report_key"]

SOURCE = "sedna"  # the source name the GM's upstream handler is registered under
JOINT_INFERENCE = "jointinferenceservice"  # Sedna's lower-cased ownerKind
LC_KEY = "sedna/localcontroller"  # the LC's own announcement (where it listens)
LC_KIND = "localcontroller"  # its content's ``kind``


def report_key(owner_kind: str, namespace: str, owner_name: str) -> str:
    return f"sedna/{owner_kind}/{namespace}/{owner_name}"
