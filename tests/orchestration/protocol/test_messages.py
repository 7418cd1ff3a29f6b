from __future__ import annotations

import orjson
import pytest
from orbiter.orchestration.protocol import (
    ERROR,
    RESPONSE,
    Message,
    MessageError,
    parse_resource,
    resource_path,
)


def test_wire_shape_matches_kubeedge() -> None:
    msg = Message("edgecontroller", "resource", "update", "default/pod/web", {"kind": "Pod"})
    msg.resource_version = "42"
    data = orjson.loads(msg.encode())
    assert set(data) == {"header", "route", "content"}
    assert data["route"] == {
        "source": "edgecontroller",
        "group": "resource",
        "operation": "update",
        "resource": "default/pod/web",
    }
    assert data["header"]["resourceversion"] == "42"
    assert isinstance(data["header"]["timestamp"], int)
    assert "parent_msg_id" not in data["header"] and "sync" not in data["header"]


def test_round_trip_and_response() -> None:
    msg = Message("metamanager", "resource", "insert", "kube-system/configmap/c", {"a": 1})
    back = Message.decode(msg.encode())
    assert back == msg
    reply = back.response()
    assert reply.operation == RESPONSE and reply.parent_msg_id == msg.msg_id
    assert reply.content == "OK" and reply.resource == msg.resource
    err = back.error("no such pod")
    assert err.operation == ERROR and err.content == "no such pod"


@pytest.mark.parametrize(
    ("frame", "problem"),
    [
        (b"{", "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (b'{"header": 1, "route": {}}', "header must be an object"),
        (b'{"header": {"msg_id": "a"}, "route": []}', "route must be an object"),
        (b'{"header": {}, "route": {"operation": "x"}}', "msg_id is required"),
        (b'{"header": {"msg_id": "a"}, "route": {}}', "operation is required"),
        (b'{"header": {"msg_id": 5}, "route": {"operation": "x"}}', "'msg_id' must be a string"),
        (
            b'{"header": {"msg_id": "a", "timestamp": "now"}, "route": {"operation": "x"}}',
            "timestamp must be an integer",
        ),
        (
            b'{"header": {"msg_id": "a", "sync": 1}, "route": {"operation": "x"}}',
            "sync must be a boolean",
        ),
    ],
)
def test_bad_frames_say_what_is_wrong(frame: bytes, problem: str) -> None:
    with pytest.raises(MessageError, match=problem):
        Message.decode(frame)


def test_frame_and_field_caps() -> None:
    big = Message("a", "b", "c", "d", "x" * 2000).encode()
    with pytest.raises(MessageError, match="over the 1000-byte cap"):
        Message.decode(big, max_size=1000)
    long_route = Message("a", "b", "c", "r" * 5000).encode()
    with pytest.raises(MessageError, match="'resource' is over"):
        Message.decode(long_route)


def test_resource_paths() -> None:
    assert resource_path("default", "pod", "web") == "default/pod/web"
    assert resource_path(None, "node", "n1") == "null/node/n1"
    assert parse_resource("null/node/n1") == (None, "node", "n1")
    assert parse_resource("default/podlist") == ("default", "podlist", "")
    for bad in ("", "a", "a//b", "a/b/c/d"):
        with pytest.raises(MessageError):
            parse_resource(bad)
