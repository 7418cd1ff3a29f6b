"""Installing the CRDs the cloud's controllers need, at start: created when missing, updated
when their spec differs, and safe when several cloud replicas start at once."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from ..client import CRDS, Client, ConflictError, NotFoundError
from .controlling import meta

log = logging.getLogger(__name__)


async def install_crds(client: Client, crds: Iterable[dict[str, Any]]) -> None:
    """Create or update each CRD; idempotent."""
    for crd in crds:
        name = crd["metadata"]["name"]
        for _ in range(5):  # another replica may be writing it too
            try:
                current = await client.get(CRDS, name)
            except NotFoundError:
                try:
                    await client.create(CRDS, crd)
                except ConflictError:
                    continue
                break
            if _contains(current.get("spec"), crd["spec"]):
                break
            version = meta(current).get("resourceVersion")
            body = {**crd, "metadata": {**crd["metadata"], "resourceVersion": version}}
            try:
                await client.replace(CRDS, body)
            except ConflictError:
                continue
            log.info("updated CRD %s", name)
            break


def _contains(have: Any, want: Any) -> bool:
    """Whether ``have`` holds everything ``want`` says (the server may add defaults)."""
    if isinstance(want, dict):
        return isinstance(have, dict) and all(_contains(have.get(k), v) for k, v in want.items())
    if isinstance(want, list):
        return (
            isinstance(have, list)
            and len(have) == len(want)
            and all(_contains(h, w) for h, w in zip(have, want, strict=True))
        )
    return bool(have == want)
