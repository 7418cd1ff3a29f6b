"""Which namespaces exist and which are terminating, followed from the store.

Every namespaced create asks; answering from memory spares a store read per create. A miss
still reads the store (the namespace may be newer than what this process has seen).
"""

from __future__ import annotations

from typing import Any

from ..apis import ResourceType
from ..store import Event, KeyValue, Store
from .following import PrefixFollower
from .storage import Codec, object_key, type_prefix


class NamespaceCache:
    def __init__(self, store: Store, codec: Codec, rt: ResourceType) -> None:
        self._store, self._codec, self._rt = store, codec, rt
        self._terminating: dict[str, bool] = {}  # name -> being deleted
        self._follower = PrefixFollower(
            store,
            type_prefix(rt),
            on_list=self._on_list,
            on_event=self._on_event,
            name="namespace-follower",
        )

    async def start(self) -> None:
        await self._follower.start()

    async def close(self) -> None:
        await self._follower.close()

    def _on_list(self, kvs: list[KeyValue]) -> None:
        self._terminating = {}
        for kv in kvs:
            self._remember(self._codec.decode(self._rt, kv))

    def _on_event(self, event: Event) -> None:
        ns = self._codec.decode(self._rt, event.kv)
        if event.type == "DELETED":
            self._terminating.pop(ns["metadata"]["name"], None)
        else:
            self._remember(ns)

    def _remember(self, ns: dict[str, Any]) -> None:
        self._terminating[ns["metadata"]["name"]] = bool(ns["metadata"].get("deletionTimestamp"))

    async def state(self, name: str) -> bool | None:
        """None: no such namespace; True: terminating; False: active."""
        known = self._terminating.get(name)
        if known is not None:
            # An object created just as its namespace starts terminating is still removed:
            # the namespace controller empties a namespace before finalizing it.
            return known
        kv = await self._store.get(object_key(self._rt, "", name))
        if kv is None:
            return None
        ns = self._codec.decode(self._rt, kv)
        return bool(ns["metadata"].get("deletionTimestamp"))
