"""The embedded MQTT broker.

``TestMqttBehaviour`` runs every scenario against our Broker and against mosquitto 2.0.11 (the
``endpoint`` fixture is parametrized), so "behaves like mosquitto" is checked, not assumed.
``TestOrbiterBroker`` covers what only ours promises: its limits, bad peers, its lifecycle.
``TestCodec`` and ``TestMatching`` pin the pieces underneath.
"""

from __future__ import annotations

import asyncio
import socket
import time
from contextlib import AsyncExitStack
from typing import Any

import pytest
from orbiter.orchestration.edge.eventbus import Broker, ConnectRefused, PacketTooLarge
from orbiter.orchestration.edge.eventbus.matching import SubscriptionTree, topic_matches
from orbiter.orchestration.edge.eventbus.packets import (
    Connack,
    Connect,
    Disconnect,
    Packet,
    PacketReader,
    Pingreq,
    Pingresp,
    ProtocolError,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
    Will,
    decode,
    encode,
    validate_topic_filter,
    validate_topic_name,
)

from .conftest import Endpoint, StartBroker, receive, receive_until

TWIN = "$hw/events/device/default/d1/twin/update"
TWIN_FILTER = "$hw/events/device/+/+/twin/+"


def granted(codes: Any) -> list[int]:
    """SUBACK return codes as ints (aiomqtt hands back paho ReasonCodes)."""
    return [int(getattr(c, "value", c)) for c in codes]


def packet_id(p: Publish) -> int:
    assert p.packet_id is not None
    return p.packet_id


class TestMqttBehaviour:
    """Each test runs twice: against our Broker and against a real mosquitto."""

    async def test_publish_subscribe_qos_0_1_2(self, endpoint: Endpoint) -> None:
        async with endpoint.client("sub") as sub, endpoint.client("pub") as pub:
            (grant,) = granted(await sub.subscribe("t/q", qos=2))
            await sub.subscribe("end", qos=1)
            # Documented difference: ours grants QoS 1 when 2 is asked, mosquitto grants 2.
            assert grant == (1 if endpoint.backend == "orbiter" else 2)
            for qos in (0, 1, 2):
                await pub.publish("t/q", b"m%d" % qos, qos=qos)
            await pub.publish("end", b"", qos=1)
            # paho hands over an inbound QoS 2 message only at PUBREL, so the sentinel may
            # overtake it: take four messages, then check with a second sentinel.
            got = [await receive(sub) for _ in range(4)]
            await pub.publish("end", b"", qos=1)
            assert await receive_until(sub) == []
        assert sorted((m.topic.value, m.payload, m.qos) for m in got) == [
            ("end", b"", 1),
            *[("t/q", b"m%d" % q, min(q, grant)) for q in (0, 1, 2)],
        ]

    async def test_wildcards(self, endpoint: Endpoint) -> None:
        expected = {
            "a/+/c": ["a/b/c"],
            "a/#": ["a/b/c", "a", "a/b", "a/b/c/d", "a/"],
            "+/b/c": ["a/b/c", "x/b/c"],
            "a/b": ["a/b"],
            "+/+": ["a/b", "a/", "x/y"],
        }
        async with AsyncExitStack() as stack:
            subs = {}
            for i, topic_filter in enumerate(expected):
                subs[topic_filter] = sub = await stack.enter_async_context(
                    endpoint.client(f"sub{i}")
                )
                await sub.subscribe(topic_filter, qos=1)
                await sub.subscribe("end", qos=1)
            pub = await stack.enter_async_context(endpoint.client("pub"))
            for topic in ["a/b/c", "a", "a/b", "x/b/c", "a/b/c/d", "a/", "x/y"]:
                await pub.publish(topic, topic.encode(), qos=1)
            await pub.publish("end", b"", qos=1)
            for topic_filter, topics in expected.items():
                got = await receive_until(subs[topic_filter])
                assert [t for t, *_ in got] == topics, topic_filter

    async def test_dollar_topics_need_an_explicit_first_level(self, endpoint: Endpoint) -> None:
        async with AsyncExitStack() as stack:
            twin, everything, plus, pub = [
                await stack.enter_async_context(endpoint.client(name))
                for name in ("twin", "everything", "plus", "pub")
            ]
            await twin.subscribe(TWIN_FILTER, qos=1)
            await everything.subscribe("#", qos=1)  # also receives the sentinel
            await plus.subscribe("+/events/device/#", qos=1)
            for sub in (twin, plus):
                await sub.subscribe("end", qos=1)
            await pub.publish(TWIN, b'{"twin":{}}', qos=1)
            await pub.publish("end", b"", qos=1)
            assert await receive_until(twin) == [(TWIN, b'{"twin":{}}', 1, False)]
            assert await receive_until(everything) == []
            assert await receive_until(plus) == []

    async def test_retained_messages_and_their_deletion(self, endpoint: Endpoint) -> None:
        async with endpoint.client("live") as live, endpoint.client("pub") as pub:
            await live.subscribe("r/#", qos=1)
            await live.subscribe("end/live", qos=1)
            await pub.publish("r/1", b"one", qos=1, retain=True)
            await pub.publish("r/2", b"two", qos=0, retain=True)
            await pub.publish("end/live", b"", qos=1)
            # Forwarded live, the retain flag is cleared.
            assert await receive_until(live, "end/live") == [
                ("r/1", b"one", 1, False),
                ("r/2", b"two", 0, False),
            ]
            async with endpoint.client("late") as late:
                await late.subscribe("end/late", qos=1)
                await late.subscribe("r/#", qos=1)
                await pub.publish("end/late", b"", qos=1)
                assert sorted(await receive_until(late, "end/late")) == [
                    ("r/1", b"one", 1, True),
                    ("r/2", b"two", 0, True),
                ]
            await pub.publish("r/1", b"", qos=1, retain=True)  # deletes, and is forwarded
            await pub.publish("end/live", b"", qos=1)
            assert await receive_until(live, "end/live") == [("r/1", b"", 1, False)]
            async with endpoint.client("later") as later:
                await later.subscribe("end/later", qos=1)
                await later.subscribe("r/#", qos=1)
                await pub.publish("end/later", b"", qos=1)
                assert await receive_until(later, "end/later") == [("r/2", b"two", 0, True)]

    async def test_persistent_session_queues_while_offline(self, endpoint: Endpoint) -> None:
        raw, ack = await endpoint.raw("p1", clean_session=False)
        assert ack == Connack(False, 0)
        raw.send(Subscribe(1, (("q/#", 1),)))
        assert (await raw.expect(Suback)).return_codes == (1,)
        raw.send(Disconnect())
        await raw.wait_closed_by_peer()
        await raw.close()
        async with endpoint.client("pub") as pub:
            for i in range(3):
                await pub.publish(f"q/{i}", b"%d" % i, qos=1)
            await pub.publish("q/zero", b"", qos=0)  # QoS 0 is not kept for offline clients
        raw, ack = await endpoint.raw("p1", clean_session=False)
        assert ack == Connack(True, 0)
        for i in range(3):
            p = await raw.expect(Publish)
            assert (p.topic, p.payload, p.qos, p.dup) == (f"q/{i}", b"%d" % i, 1, False)
            raw.send(Puback(packet_id(p)))
        async with endpoint.client("pub") as pub:
            await pub.publish("q/end", b"", qos=1)
        assert (await raw.expect(Publish)).topic == "q/end"
        await raw.close()
        # A clean session discards the stored one, and is itself forgotten on disconnect.
        raw, ack = await endpoint.raw("p1", clean_session=True)
        assert ack == Connack(False, 0)
        raw.send(Disconnect())
        await raw.wait_closed_by_peer()
        await raw.close()
        raw, ack = await endpoint.raw("p1", clean_session=False)
        assert ack == Connack(False, 0)
        await raw.close()

    async def test_unacknowledged_qos1_resent_with_dup(self, endpoint: Endpoint) -> None:
        raw, _ = await endpoint.raw("r1", clean_session=False)
        raw.send(Subscribe(1, (("d/#", 1),)))
        await raw.expect(Suback)
        async with endpoint.client("pub") as pub:
            await pub.publish("d/1", b"x", qos=1)
            first = await raw.expect(Publish)
            assert not first.dup
            await raw.close()  # neither PUBACK nor DISCONNECT
            raw, ack = await endpoint.raw("r1", clean_session=False)
            assert ack.session_present
            again = await raw.expect(Publish)
            assert (again.topic, again.payload, again.qos, again.dup) == ("d/1", b"x", 1, True)
            assert again.packet_id == first.packet_id
            raw.send(Puback(packet_id(again)))
            await pub.publish("d/end", b"", qos=1)
            assert (await raw.expect(Publish)).topic == "d/end"  # and no second resend
        await raw.close()

    async def test_will_on_ungraceful_disconnect_only(self, endpoint: Endpoint) -> None:
        async with endpoint.client("watch") as watch:
            await watch.subscribe("will/#", qos=1)
            await watch.subscribe("end", qos=1)
            gone, _ = await endpoint.raw("gone", will=Will("will/gone", b"lost", 1))
            polite, _ = await endpoint.raw("polite", will=Will("will/polite", b"never", 1))
            polite.send(Disconnect())
            await polite.wait_closed_by_peer()  # the broker has decided about its will
            await polite.close()
            await gone.close()
            m = await receive(watch)
            assert (m.topic.value, m.payload, m.qos) == ("will/gone", b"lost", 1)
            async with endpoint.client("pub") as pub:
                await pub.publish("end", b"", qos=1)
            assert await receive_until(watch) == []

    async def test_client_id_takeover(self, endpoint: Endpoint) -> None:
        async with endpoint.client("watch") as watch:
            await watch.subscribe("will/#")
            old, _ = await endpoint.raw("same", will=Will("will/same", b"old"))
            # The displaced session was clean: nothing is resumed from it.
            new, ack = await endpoint.raw("same", clean_session=False)
            assert ack == Connack(False, 0)
            await old.wait_closed_by_peer()
            new.send(Pingreq())
            assert await new.expect(Pingresp) == Pingresp()
            m = await receive(watch)  # mosquitto publishes the displaced connection's will
            assert (m.topic.value, m.payload) == ("will/same", b"old")
            await old.close()
            await new.close()

    async def test_unsubscribe(self, endpoint: Endpoint) -> None:
        async with endpoint.client("sub") as sub, endpoint.client("pub") as pub:
            for topic in ("u/1", "u/2", "end"):
                await sub.subscribe(topic, qos=1)
            await sub.unsubscribe("u/1")
            await pub.publish("u/1", b"gone", qos=1)
            await pub.publish("u/2", b"kept", qos=1)
            await pub.publish("end", b"", qos=1)
            assert await receive_until(sub) == [("u/2", b"kept", 1, False)]

    async def test_overlapping_subscriptions_deliver_once(self, endpoint: Endpoint) -> None:
        async with endpoint.client("sub") as sub, endpoint.client("pub") as pub:
            for topic_filter, qos in (("o/#", 0), ("o/+", 1), ("o/x", 0), ("end", 1)):
                await sub.subscribe(topic_filter, qos=qos)
            await pub.publish("o/x", b"once", qos=1)
            await pub.publish("end", b"", qos=1)
            ((topic, payload, qos, _),) = await receive_until(sub)
        assert (topic, payload) == ("o/x", b"once")
        # MQTT-3.3.5-1 wants the highest QoS of the matching subscriptions; mosquitto 2.0.11
        # delivers once but at QoS 0 here, so only ours is held to the spec on that point.
        if endpoint.backend == "orbiter":
            assert qos == 1

    async def test_qos2_resend_is_delivered_once(self, endpoint: Endpoint) -> None:
        async with endpoint.client("sub") as sub:
            await sub.subscribe("x/#", qos=1)  # QoS 1 out: paho would hold a QoS 2 one back
            await sub.subscribe("end", qos=1)
            raw, _ = await endpoint.raw("q2pub")
            raw.send(Publish("x/1", b"once", 2, packet_id=7))
            assert await raw.expect(Pubrec) == Pubrec(7)
            raw.send(Publish("x/1", b"once", 2, dup=True, packet_id=7))
            assert await raw.expect(Pubrec) == Pubrec(7)
            raw.send(Pubrel(7))
            assert await raw.expect(Pubcomp) == Pubcomp(7)
            raw.send(Publish("end", b"", 1, packet_id=8))
            assert await raw.expect(Puback) == Puback(8)
            assert [(t, p) for t, p, *_ in await receive_until(sub)] == [("x/1", b"once")]
            await raw.close()

    async def test_client_ids_and_protocol_levels(self, endpoint: Endpoint) -> None:
        raw, ack = await endpoint.raw("", clean_session=True)  # the broker makes one up
        assert ack == Connack(False, 0)
        raw.send(Pingreq())
        await raw.expect(Pingresp)
        await raw.close()
        raw, ack = await endpoint.raw("", clean_session=False)
        assert ack == Connack(False, 2)
        await raw.wait_closed_by_peer()
        await raw.close()
        raw = await endpoint.open_raw()
        raw.send(Connect("v6", protocol_level=6))
        assert await raw.expect(Connack) == Connack(False, 1)
        await raw.wait_closed_by_peer()
        await raw.close()
        raw = await endpoint.open_raw()
        raw.send(Connect("old", protocol_name="MQIsdp", protocol_level=3))
        assert await raw.expect(Connack) == Connack(False, 0)
        await raw.close()


_HELLO = encode(Connect("bad"))
# (raw bytes, the reason the broker must log); each closes that connection and only that one.
BAD_INPUT = {
    "reserved type": (b"\x00\x00", "reserved packet type 0"),
    "ping before connect": (b"\xc0\x00", "PINGREQ before CONNECT"),
    "unknown protocol": (encode(Connect("x", protocol_name="HTTP")), "unknown protocol name"),
    "password without user": (
        b"\x10\x11\x00\x04MQTT\x04\x42\x00\x00\x00\x01c\x00\x02pw",
        "password flag without user name",
    ),
    "second connect": (_HELLO + _HELLO, "unexpected CONNECT"),
    "connack from client": (_HELLO + b"\x20\x02\x00\x00", "unexpected CONNACK"),
    "remaining length": (_HELLO + b"\x30\xff\xff\xff\xff\x01", "longer than 4 bytes"),
    "oversized": (_HELLO + b"\x30\xfe\x1f", "4097 bytes exceeds the 4096-byte limit"),
    "subscribe flags": (_HELLO + b"\x80\x06\x00\x01\x00\x01a\x00", "invalid fixed-header flags"),
    "invalid utf-8": (_HELLO + b"\x30\x04\x00\x02\xc3\x28", "topic name is not valid UTF-8"),
    "U+0000": (_HELLO + b"\x30\x04\x00\x02a\x00", "U+0000 in topic name"),
    "wildcard topic": (_HELLO + b"\x30\x05\x00\x03a/#", "wildcard in topic name"),
    "qos 3": (_HELLO + b"\x36\x05\x00\x01a\x00\x01", "PUBLISH with QoS 3"),
    "bad filter": (_HELLO + encode(Subscribe(1, (("a/#/b", 0),))), "'#' must be"),
    "truncated": (_HELLO + b"\x30\x10\x00", "stream ended inside a packet"),
}


class TestOrbiterBroker:
    """What only our broker promises: limits, bad peers, in-process publish, lifecycle."""

    @pytest.mark.parametrize("case", BAD_INPUT, ids=list(BAD_INPUT))
    async def test_bad_input_closes_only_that_connection(
        self, case: str, start_broker: StartBroker, caplog: pytest.LogCaptureFixture
    ) -> None:
        data, reason = BAD_INPUT[case]
        _, ep = await start_broker(max_packet_size=4096)
        async with ep.client("sub") as sub, ep.client("pub") as pub:
            await sub.subscribe("ok", qos=1)
            bad = await ep.open_raw()
            bad.send(data)
            bad.writer.write_eof()  # so a truncated packet ends at end of stream
            await bad.wait_closed_by_peer()
            await pub.publish("ok", b"still serving", qos=1)
            assert (await receive(sub)).payload == b"still serving"
        assert reason in caplog.text

    async def test_mqtt5_is_refused_with_connack_1(self, start_broker: StartBroker) -> None:
        _, ep = await start_broker()
        raw = await ep.open_raw()
        # An MQTT 5 CONNECT: level 5, keepalive 60, empty properties, client id "v5".
        raw.send(b"\x10\x0f\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x02v5")
        assert await raw.expect(Connack) == Connack(False, 1)
        await raw.wait_closed_by_peer()

    async def test_keepalive_expiry_closes_and_publishes_will(
        self, start_broker: StartBroker, caplog: pytest.LogCaptureFixture
    ) -> None:
        _, ep = await start_broker()
        async with ep.client("watch") as watch:
            await watch.subscribe("will/#")
            raw, _ = await ep.raw("idle", keepalive=1, will=Will("will/idle", b"timed out"))
            started = time.monotonic()
            await raw.wait_closed_by_peer()
            assert 1.4 <= time.monotonic() - started < 2.5  # 1.5 x keepalive, give or take
            assert (await receive(watch)).payload == b"timed out"
        assert "keepalive expired" in caplog.text

    async def test_keepalive_is_kept_by_pings(self, start_broker: StartBroker) -> None:
        _, ep = await start_broker()
        raw, _ = await ep.raw("busy", keepalive=1)
        for _ in range(5):  # 2 s in all, longer than 1.5 x keepalive
            raw.send(Pingreq())
            assert await raw.expect(Pingresp) == Pingresp()
            await asyncio.sleep(0.4)  # the passage of time is what is tested here
        raw.send(Pingreq())
        assert await raw.expect(Pingresp) == Pingresp()

    async def test_connection_without_connect_is_closed(
        self, start_broker: StartBroker, caplog: pytest.LogCaptureFixture
    ) -> None:
        broker, ep = await start_broker()
        broker.connect_timeout = 0.2
        raw = await ep.open_raw()
        assert await raw.wait_closed_by_peer() == 0
        assert "no CONNECT within 0.2s" in caplog.text

    async def test_max_connections(
        self, start_broker: StartBroker, caplog: pytest.LogCaptureFixture
    ) -> None:
        _, ep = await start_broker(max_connections=2)
        first, _ = await ep.raw("a")
        await ep.raw("b")
        third = await ep.open_raw()
        third.send(Connect("c"))
        assert await third.wait_closed_by_peer() == 0  # not even a CONNACK
        first.send(Pingreq())
        assert await first.expect(Pingresp) == Pingresp()
        assert "max_connections" in caplog.text

    async def test_subscriber_that_does_not_read_does_not_stall_others(
        self, start_broker: StartBroker, caplog: pytest.LogCaptureFixture
    ) -> None:
        broker, ep = await start_broker(max_packet_size=16 * 1024)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window, fills fast
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (ep.host, ep.port))
        stuck, _ = await ep.raw("stuck", sock=sock)
        stuck.send(Subscribe(1, (("flood", 0),)))
        await stuck.expect(Suback)
        payload = bytes(8192)
        count = 1000  # 8 MB: far beyond the kernel buffers plus max_buffered (256 KiB)
        async with ep.client("reader") as reader, ep.client("pub") as pub:
            await reader.subscribe("flood", qos=0)
            for i in range(count):
                await pub.publish("flood", i.to_bytes(4, "big") + payload, qos=1)
            for i in range(count):
                m = await receive(reader)
                assert isinstance(m.payload, bytes) and m.payload[:4] == i.to_bytes(4, "big")
        assert await stuck.wait_closed_by_peer() < count * len(payload)
        assert "closed <MQTT client stuck" in caplog.text and "not reading" in caplog.text
        assert broker.stats()["connections"] == 0

    async def test_inflight_window_and_bounded_queue(
        self, start_broker: StartBroker, caplog: pytest.LogCaptureFixture
    ) -> None:
        broker, ep = await start_broker(max_inflight=3, session_queue=5)
        raw, _ = await ep.raw("slow")
        raw.send(Subscribe(1, (("q", 1), ("s", 0))))
        await raw.expect(Suback)
        async with ep.client("pub") as pub:
            for i in range(10):
                await pub.publish("q", b"%d" % i, qos=1)
            await pub.publish("s", b"mark", qos=0)  # QoS 0 is not held back by the window
            got = [await raw.expect(Publish) for _ in range(4)]
            assert [p.payload for p in got] == [b"0", b"1", b"2", b"mark"]
            assert broker.stats()["dropped"] == 2  # 3 in flight + 5 queued of 10
            window = got[:3]
            for expected in ([b"3", b"4", b"5"], [b"6", b"7"]):
                for p in window:
                    raw.send(Puback(packet_id(p)))
                window = [await raw.expect(Publish) for _ in expected]
                assert [p.payload for p in window] == expected
            await pub.publish("s", b"mark", qos=0)
            assert (await raw.expect(Publish)).payload == b"mark"  # 8 and 9 were dropped
        assert "queue of 5 QoS 1 messages full" in caplog.text

    async def test_offline_queue_is_bounded(self, start_broker: StartBroker) -> None:
        broker, ep = await start_broker(session_queue=3)
        raw, _ = await ep.raw("away", clean_session=False)
        raw.send(Subscribe(1, (("q", 1),)))
        await raw.expect(Suback)
        raw.send(Disconnect())
        await raw.wait_closed_by_peer()
        async with ep.client("pub") as pub:
            for i in range(5):
                await pub.publish("q", b"%d" % i, qos=1)
            raw, ack = await ep.raw("away", clean_session=False)
            assert ack == Connack(True, 0)
            for i in range(3):
                p = await raw.expect(Publish)
                assert p.payload == b"%d" % i
                raw.send(Puback(packet_id(p)))
            await pub.publish("q", b"end", qos=1)
            assert (await raw.expect(Publish)).payload == b"end"
        assert broker.stats()["dropped"] == 2

    async def test_in_process_publish(self, start_broker: StartBroker) -> None:
        broker, ep = await start_broker()
        async with ep.client("app") as app:
            await app.subscribe(TWIN_FILTER, qos=1)
            await broker.publish(TWIN, b"{}", qos=1)
            m = await receive(app)
            assert (m.topic.value, m.payload, m.qos, m.retain) == (TWIN, b"{}", 1, False)
            await broker.publish("state/d1", b"online", retain=True)
            await app.subscribe("state/#")
            m = await receive(app)
            assert (m.topic.value, m.payload, m.retain) == ("state/d1", b"online", True)
        with pytest.raises(ValueError, match="wildcard"):
            await broker.publish("state/#", b"")
        with pytest.raises(ValueError, match="QoS"):
            await broker.publish("state/x", b"", qos=3)

    async def test_stop_leaves_nothing_running(self) -> None:
        broker = Broker(port=0)
        await broker.start()
        port = broker.port
        assert port != 0
        ep = Endpoint("127.0.0.1", port, "orbiter")
        try:
            connected, _ = await ep.raw("a", will=Will("will/a", b"not at shutdown"))
            silent = await ep.open_raw()  # connected, no CONNECT yet
            await broker.stop()
            await connected.wait_closed_by_peer()
            await silent.wait_closed_by_peer()
            assert broker.stats()["connections"] == 0
            assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
            with pytest.raises(OSError):
                await asyncio.open_connection("127.0.0.1", port)
            await broker.stop()  # a second stop is a no-op
        finally:
            await ep.close_raws()
            await broker.stop()


class TestCodec:
    PACKETS: list[Packet] = [
        Connect("c1", False, 60, Will("w/t", b"\x00bye", 2, True), "user", b"\xffpw"),
        Connect("c2", protocol_name="MQIsdp", protocol_level=3),
        Connack(True, 0),
        Publish("a/b", b"payload", 1, True, True, 65535),
        Publish("$hw/events/x", b"", 0),
        Puback(1),
        Pubrec(2),
        Pubrel(3),
        Pubcomp(4),
        Subscribe(5, (("a/+", 0), ("#", 1), ("x/y", 2))),
        Suback(5, (0, 1, 0x80)),
        Unsubscribe(6, ("a/+", "#")),
        Unsuback(6),
        Pingreq(),
        Pingresp(),
        Disconnect(),
    ]

    async def test_round_trip_fed_one_byte_at_a_time(self) -> None:
        data = b"".join(encode(p) for p in self.PACKETS)
        stream = asyncio.StreamReader()

        async def feed() -> None:
            for i in range(len(data)):
                stream.feed_data(data[i : i + 1])
                await asyncio.sleep(0)  # yield, so the reader sees every partial state
            stream.feed_eof()

        feeder = asyncio.create_task(feed())
        reader = PacketReader(stream)
        got = [await reader.read() for _ in self.PACKETS]
        assert await reader.read() is None
        await feeder
        assert got == self.PACKETS

    @pytest.mark.parametrize(("size", "header"), [(127, 2), (128, 3), (16383, 3), (16384, 4),
                                                  (2_097_151, 4), (2_097_152, 5)])  # fmt: skip
    def test_remaining_length_boundaries(self, size: int, header: int) -> None:
        packet = Publish("t", bytes(size - 3))  # body = 2 + len("t") + payload
        data = encode(packet)
        assert len(data) == header + size
        assert decode(data[0], data[header:]) == packet

    async def test_size_cap_is_checked_before_the_body(self) -> None:
        stream = asyncio.StreamReader()
        stream.feed_data(b"\x30\x0a")  # announces 12 bytes; the body never comes
        with pytest.raises(PacketTooLarge, match="12 bytes exceeds the 11-byte limit"):
            await PacketReader(stream, 11).read()

    @pytest.mark.parametrize(
        ("first", "body", "reason"),
        [
            (0xF0, b"", "reserved packet type 15"),
            (0x40, b"\x00\x00", "packet identifier 0"),
            (0x40, b"\x00\x01\x00", "expected 2"),
            (0xC0, b"\x00", "expected 0"),
            (0x62, b"", "expected 2"),
            (0x38, b"\x00\x01a\x00\x01", "DUP set at QoS 0"),
            (0x82, b"\x00\x01", "without topic filters"),
            (0x82, b"\x00\x01\x00\x01a\x03", "requested QoS"),
            (0x82, b"\x00\x01\x00\x01a", "without requested QoS"),
            (0xA2, b"\x00\x01\x00\x05a", "runs past the end"),
            (0x10, b"\x00\x04MQTT\x04\x01\x00\x00\x00\x00", "reserved flag"),
            (0x10, b"\x00\x04MQTT\x04\x18\x00\x00\x00\x00", "without the will flag"),
            (0x10, b"\x00\x04MQTT\x04\x02\x00\x00\x00\x00\x00", "trailing bytes"),
            (0x10, b"\x00\x04MQTT\x04\x1e\x00\x00\x00\x00", "will QoS 3"),
        ],
    )
    def test_malformed(self, first: int, body: bytes, reason: str) -> None:
        with pytest.raises(ProtocolError, match=reason):
            decode(first, body)

    def test_mqtt5_connect_is_refused_not_parsed(self) -> None:
        with pytest.raises(ConnectRefused) as refused:
            decode(0x10, b"\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x02v5")
        assert refused.value.return_code == 1

    @pytest.mark.parametrize("name", ["a", "a/b", "/", "$hw/events/x", "a//b", "\u00e9/\u4e2d"])
    def test_valid_topic_names(self, name: str) -> None:
        validate_topic_name(name)

    @pytest.mark.parametrize("name", ["", "a/+", "#", "a/b#", "a\x00"])
    def test_invalid_topic_names(self, name: str) -> None:
        with pytest.raises(ProtocolError):
            validate_topic_name(name)

    @pytest.mark.parametrize("name", ["#", "+", "a/#", "+/+/#", "a/+/b", "/+", "$hw/#"])
    def test_valid_topic_filters(self, name: str) -> None:
        validate_topic_filter(name)

    @pytest.mark.parametrize("name", ["", "a#", "a/#/b", "#/a", "a+", "a/+b", "+a/b", "x\x00"])
    def test_invalid_topic_filters(self, name: str) -> None:
        with pytest.raises(ProtocolError):
            validate_topic_filter(name)


class TestMatching:
    CASES = [
        ("sport/#", "sport", True),
        ("sport/#", "sport/tennis/player1", True),
        ("sport/+", "sport", False),
        ("sport/+", "sport/", True),
        ("+/+", "/finance", True),
        ("/+", "/finance", True),
        ("+", "/finance", False),
        ("#", "$SYS/x", False),
        ("+/monitor/Clients", "$SYS/monitor/Clients", False),
        ("$SYS/#", "$SYS/monitor/Clients", True),
        ("$SYS/monitor/+", "$SYS/monitor/Clients", True),
        (TWIN_FILTER, TWIN, True),
        (TWIN_FILTER, TWIN + "/result", False),
        ("a/b", "a/b/c", False),
    ]

    @pytest.mark.parametrize(("topic_filter", "topic", "expected"), CASES)
    def test_filter_against_topic(self, topic_filter: str, topic: str, expected: bool) -> None:
        assert topic_matches(topic_filter, topic) is expected
        tree = SubscriptionTree()
        tree.add(topic_filter, "c", 1)
        assert ("c" in tree.match(topic)) is expected

    def test_highest_qos_per_client_and_pruning(self) -> None:
        tree = SubscriptionTree()
        tree.add("a/#", "c", 0)
        tree.add("a/b", "c", 1)
        tree.add("+/b", "d", 0)
        assert tree.match("a/b") == {"c": 1, "d": 0}
        for topic_filter, client_id in (("a/#", "c"), ("a/b", "c"), ("+/b", "d")):
            tree.remove(topic_filter, client_id)
        assert tree.match("a/b") == {}
        assert tree._root.children == {}
