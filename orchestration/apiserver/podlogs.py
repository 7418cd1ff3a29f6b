"""``GET pods/{name}/log``: the API side of ``kubectl logs``.

The API server holds no logs: it checks the request against the pod and hands it to
``API.pod_logs``, a pluggable source (the cloud sets one that asks the pod's edge node).
The source yields byte chunks; it raises ``APIError`` for refusals that happen before the
first chunk (the node is not connected, the container has not started), so those still
become HTTP errors.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from . import errors
from .errors import APIError

# Sanity caps: a tail longer than this is a mistake, not a request (kube has none, but its
# kubelet reads the whole file for a tail; ours ships it over the node's one WebSocket).
MAX_TAIL_LINES = 1_000_000
MAX_LIMIT_BYTES = 1 << 30


@dataclass(frozen=True, slots=True)
class LogOptions:
    """What ``PodLogOptions`` asks for (``timestamps`` and ``since*`` are accepted, ignored:
    the runtime's logs carry no per-line times)."""

    container: str
    follow: bool = False
    previous: bool = False
    tail_lines: int | None = None  # None: the whole log; 0: nothing (then follow)
    limit_bytes: int | None = None


LogSource = Callable[[dict[str, Any], LogOptions], AsyncGenerator[bytes, None]]


def parse_options(query: Mapping[str, str]) -> tuple[str, LogOptions]:
    """The query's options; the container name may still be empty (resolved by
    ``choose_container``)."""
    tail = _optional_int(query, "tailLines", minimum=0)
    limit = _optional_int(query, "limitBytes", minimum=1)
    opts = LogOptions(
        container=query.get("container", ""),
        follow=_bool(query, "follow"),
        previous=_bool(query, "previous"),
        tail_lines=None if tail is None else min(tail, MAX_TAIL_LINES),
        limit_bytes=None if limit is None else min(limit, MAX_LIMIT_BYTES),
    )
    return opts.container, opts


def choose_container(pod: dict[str, Any], wanted: str) -> str:
    """The container to read: the one named, or the pod's only one (kube's messages)."""
    spec = pod.get("spec") or {}
    name = (pod.get("metadata") or {}).get("name", "")
    names = [str(c.get("name")) for c in spec.get("containers") or []]
    init = [str(c.get("name")) for c in spec.get("initContainers") or []]
    if not wanted:
        if len(names) == 1:
            return names[0]
        raise errors.bad_request(
            f"a container name must be specified for pod {name}, "
            f"choose one of: [{' '.join(names)}]"
            + (f" or one of the init containers: [{' '.join(init)}]" if init else "")
        )
    if wanted not in names and wanted not in init:
        raise errors.bad_request(f"container {wanted} is not valid for pod {name}")
    return wanted


async def open_log(
    source: LogSource | None, pod: dict[str, Any], opts: LogOptions
) -> tuple[bytes, AsyncGenerator[bytes, None]]:
    """Start the source and wait for its first chunk, so refusals are still HTTP errors.
    Returns (first chunk, the rest); the caller closes the iterator."""
    name = (pod.get("metadata") or {}).get("name", "")
    if not (pod.get("spec") or {}).get("nodeName"):
        raise errors.bad_request(f"pod {name} is not scheduled on a node")
    if source is None:
        raise errors.bad_request(f"pod {name}: this server has no log source for its node")
    stream = source(pod, opts)
    try:
        first = await anext(stream, b"")
    except BaseException:
        await stream.aclose()
        raise
    return first, stream


def _bool(query: Mapping[str, str], key: str) -> bool:
    value = query.get(key, "")
    if value in ("", "false", "False", "0"):
        return False
    if value in ("true", "True", "1"):
        return True
    raise errors.bad_request(f"{key}: invalid value {value!r}: must be true or false")


def _optional_int(query: Mapping[str, str], key: str, *, minimum: int) -> int | None:
    raw = query.get(key)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw) if len(raw) <= 18 else -1
    except ValueError:
        raise errors.bad_request(f"{key}: invalid value {raw!r}: must be an integer") from None
    if value < minimum:
        raise APIError(
            422, f"{key}: Invalid value: {value}: must be greater than or equal to {minimum}"
        )
    return value
