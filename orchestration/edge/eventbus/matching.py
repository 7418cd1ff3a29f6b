"""Topic matching: a tree of subscriptions keyed by topic level, and a single-filter check.

A publish walks only the branches its levels select (plus '+' and '#'), so routing cost grows
with the depth of the topic rather than the number of subscriptions. Topics starting with '$'
are not matched by a filter whose first level is a wildcard (MQTT 3.1.1 §4.7.2), so '#' does not
see ``$hw/events/...`` while ``$hw/events/device/+/+/twin/+`` does.
"""

from __future__ import annotations

__all__ = ["SubscriptionTree", "topic_matches"]


class _Node:
    __slots__ = ("children", "subscribers")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.subscribers: dict[str, int] = {}  # client id -> granted QoS


class SubscriptionTree:
    """Which clients subscribe to what, with the granted QoS of each subscription."""

    def __init__(self) -> None:
        self._root = _Node()

    def add(self, topic_filter: str, client_id: str, qos: int) -> None:
        node = self._root
        for level in topic_filter.split("/"):
            node = node.children.setdefault(level, _Node())
        node.subscribers[client_id] = qos

    def remove(self, topic_filter: str, client_id: str) -> None:
        path = [self._root]
        levels = topic_filter.split("/")
        for level in levels:
            child = path[-1].children.get(level)
            if child is None:
                return
            path.append(child)
        path[-1].subscribers.pop(client_id, None)
        # Prune empty branches so a churn of unique filters does not grow the tree forever.
        for depth in range(len(levels), 0, -1):
            node = path[depth]
            if node.subscribers or node.children:
                break
            del path[depth - 1].children[levels[depth - 1]]

    def match(self, topic: str) -> dict[str, int]:
        """Client id -> the highest QoS among that client's subscriptions matching ``topic``."""
        found: dict[str, int] = {}
        self._walk(self._root, topic.split("/"), 0, topic.startswith("$"), found)
        return found

    def _walk(
        self, node: _Node, levels: list[str], i: int, dollar: bool, found: dict[str, int]
    ) -> None:
        wild = not (dollar and i == 0)
        children = node.children
        if wild and (hashed := children.get("#")) is not None:
            _merge(found, hashed.subscribers)  # '#' also matches the parent level itself
        if i == len(levels):
            _merge(found, node.subscribers)
            return
        if (exact := children.get(levels[i])) is not None:
            self._walk(exact, levels, i + 1, dollar, found)
        if wild and (plus := children.get("+")) is not None:
            self._walk(plus, levels, i + 1, dollar, found)


def _merge(found: dict[str, int], subscribers: dict[str, int]) -> None:
    for client_id, qos in subscribers.items():
        if found.get(client_id, -1) < qos:
            found[client_id] = qos


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether one filter matches one topic (used for retained messages on SUBSCRIBE)."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    levels = topic.split("/")
    parts = topic_filter.split("/")
    for i, part in enumerate(parts):
        if part == "#":
            return True
        if i >= len(levels) or (part != "+" and part != levels[i]):
            return False
    return len(parts) == len(levels)
