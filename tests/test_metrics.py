"""wsroom.metrics: the collector, the HTTP answer, the adapters' helpers, bounded labels."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
import threading
from collections.abc import Iterator
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import TIMEOUT, Client, connect_as, http_request, user_from_query, wait_for
from wsroom import ConnectionManager, ErrorCode, Handshake, Limits, Statistics
from wsroom._delivery import Counters, close_label
from wsroom.metrics import (
    METRICS,
    MetricsCollector,
    metric_families,
    metrics_response,
)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

CLOSE_CODES = {*(str(code) for code in range(1000, 1016)), "application", "none", "other"}
STATUSES = {*(str(status) for status in range(400, 600)), "other"}
ERROR_CODES = {code.value for code in ErrorCode} | {"other"}
# Every label of every metric, and the values it may take: a small fixed set each.
BOUNDED: dict[str, set[str]] = {
    "reason": {"queue_full", "write_timeout"},
    "initiator": {"server", "client"},
    "code": CLOSE_CODES | ERROR_CODES,
    "status": STATUSES,
    "backplane": {"memory", "redis"},
}


def parse(text: str) -> Samples:
    """Every sample of an exposition, by name and sorted labels."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def check_bounded(samples: Samples) -> None:
    for name, labels in samples:
        for label, label_value in labels:
            assert label_value in BOUNDED[label], f"{name}{{{label}={label_value!r}}}"


def snapshot(**fields: Any) -> Statistics:
    base: dict[str, Any] = dict.fromkeys(
        (
            "connections",
            "users",
            "rooms",
            "queued_frames",
            "queued_bytes",
            "frames_received",
            "messages_published",
            "errors_sent",
            "dropped_frames",
            "evictions",
        ),
        0,
    )
    return Statistics(**{**base, **fields})


def render(stats: Statistics) -> Samples:
    registry = CollectorRegistry(auto_describe=False)

    class Fixed:
        def collect(self) -> Any:
            return metric_families(stats)

    registry.register(Fixed())
    return parse(generate_latest(registry).decode())


# The collector.


def test_every_metric_is_exposed_with_its_type_and_conventional_name() -> None:
    text = generate_latest(_registry_of(MetricsCollector(ConnectionManager()))).decode()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    for info in METRICS:
        assert info.name.startswith("wsroom_"), info.name
        base = info.name.removesuffix("_total")
        assert (info.type == "counter") == info.name.endswith("_total"), info.name
        assert base in families, info.name
        assert families[base].type == info.type, info.name
        assert families[base].documentation == info.help
    assert len({info.name for info in METRICS}) == len(METRICS)
    # describe() names what collect() yields.
    collector = MetricsCollector(ConnectionManager())
    assert [f.name for f in collector.describe()] == [f.name for f in collector.collect()]


def _registry_of(collector: MetricsCollector) -> CollectorRegistry:
    registry = CollectorRegistry()  # auto_describe: register() calls describe()
    registry.register(collector)
    return registry


def test_each_statistics_field_lands_in_its_metric() -> None:
    samples = render(
        snapshot(
            connections=7,
            users=5,
            rooms=3,
            memberships=9,
            queued_frames=11,
            queued_bytes=1234,
            frames_received=40,
            bytes_received=4000,
            frames_sent=90,
            bytes_sent=9000,
            deliveries=80,
            messages_published=20,
            errors_sent=6,
            errors_by_code={"forbidden": 2, "rate_limited": 3, "other": 1},
            dropped_frames=4,
            evictions=3,
            write_timeouts=1,
            rate_limited=3,
            handshakes_refused=2,
            handshakes_refused_by_status={429: 2, 401: 1, 0: 1},
            closes={("client", "1000"): 5, ("server", "1013"): 3},
            backplane="redis",
            backplane_available=False,
            backplane_round_trip=0.25,
            backplane_reconnects=2,
            backplane_dropped=8,
            gaps=6,
        )
    )
    expected = {
        "wsroom_connections": 7,
        "wsroom_users": 5,
        "wsroom_rooms": 3,
        "wsroom_room_memberships": 9,
        "wsroom_queued_frames": 11,
        "wsroom_queued_bytes": 1234,
        "wsroom_frames_received_total": 40,
        "wsroom_received_bytes_total": 4000,
        "wsroom_frames_sent_total": 90,
        "wsroom_sent_bytes_total": 9000,
        "wsroom_deliveries_total": 80,
        "wsroom_messages_published_total": 20,
        "wsroom_dropped_frames_total": 4,
        "wsroom_rate_limited_frames_total": 3,
        "wsroom_gaps_total": 6,
    }
    for name, expected_value in expected.items():
        assert value(samples, name) == expected_value, name
    assert value(samples, "wsroom_evictions_total", reason="queue_full") == 2
    assert value(samples, "wsroom_evictions_total", reason="write_timeout") == 1
    assert value(samples, "wsroom_errors_sent_total", code="rate_limited") == 3
    assert value(samples, "wsroom_errors_sent_total", code="other") == 1
    assert ("wsroom_errors_sent_total", (("code", "not_joined"),)) in samples  # 0, not absent
    assert value(samples, "wsroom_handshakes_refused_total", status="429") == 2
    assert value(samples, "wsroom_handshakes_refused_total", status="other") == 1
    assert ("wsroom_handshakes_refused_total", (("status", "503"),)) in samples
    assert value(samples, "wsroom_closes_total", initiator="client", code="1000") == 5
    assert value(samples, "wsroom_closes_total", initiator="server", code="1013") == 3
    assert value(samples, "wsroom_backplane_up", backplane="redis") == 0
    assert value(samples, "wsroom_backplane_round_trip_seconds", backplane="redis") == 0.25
    assert value(samples, "wsroom_backplane_reconnects_total", backplane="redis") == 2
    assert value(samples, "wsroom_backplane_dropped_messages_total", backplane="redis") == 8
    check_bounded(samples)


def test_a_backplane_without_a_round_trip_has_no_round_trip_sample() -> None:
    samples = render(snapshot())
    assert value(samples, "wsroom_backplane_up", backplane="memory") == 1
    assert not [key for key in samples if key[0] == "wsroom_backplane_round_trip_seconds"]


@settings(max_examples=200, deadline=None)
@given(
    closes=st.lists(
        st.tuples(st.booleans(), st.one_of(st.none(), st.integers(-(2**40), 2**40))),
        max_size=50,
    ),
    statuses=st.lists(st.integers(-(2**40), 2**40), max_size=50),
    errors=st.lists(st.text(max_size=20), max_size=50),
)
def test_labels_stay_bounded_whatever_is_counted(
    closes: list[tuple[bool, int | None]], statuses: list[int], errors: list[str]
) -> None:
    counters = Counters()
    for by_server, code in closes:
        counters.closed(by_server, code)
    for status in statuses:
        counters.handshake_refused(status)
    for error in errors:
        counters.error_sent(error)
    counters.handshake_refused("418")  # type: ignore[arg-type]  # a hook's mistake
    assert set(counters.refusals) <= {0, *range(400, 600)}
    samples = render(
        snapshot(
            closes=counters.closes,
            handshakes_refused_by_status=counters.refusals,
            errors_by_code=counters.errors,
            errors_sent=counters.errors_sent,
        )
    )
    check_bounded(samples)
    assert sum(v for (name, _), v in samples.items() if name == "wsroom_closes_total") == len(
        closes
    )


def test_close_labels() -> None:
    assert close_label(None) == "none"
    assert close_label(1000) == "1000"
    assert close_label(1015) == "1015"
    assert close_label(3000) == close_label(4999) == "application"
    assert close_label(999) == close_label(1016) == close_label(5000) == "other"


# The HTTP answer.


def test_metrics_response_methods_authorization_and_formats() -> None:
    manager = ConnectionManager()
    request = Handshake.from_target("/metrics", [], ("10.0.0.1", 1234))
    ok = metrics_response(manager, request)
    assert ok.status == 200
    headers = dict(ok.headers)
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert headers["Cache-Control"] == "no-store"
    assert int(headers["Content-Length"]) == len(ok.body)
    assert b"wsroom_connections 0.0" in ok.body

    head = metrics_response(manager, request, method="HEAD")
    assert head.status == 200
    assert head.body == b""
    assert dict(head.headers)["Content-Length"] == headers["Content-Length"]

    post = metrics_response(manager, request, method="POST")
    assert post.status == 405
    assert dict(post.headers)["Allow"] == "GET, HEAD"

    seen: list[Handshake] = []

    def only_local(req: Handshake) -> bool:
        seen.append(req)
        return req.remote_address is not None and req.remote_address[0] == "127.0.0.1"

    refused = metrics_response(manager, request, authorize=only_local)
    assert refused.status == 403
    assert b"wsroom_" not in refused.body
    assert seen == [request]

    openmetrics = Handshake.from_target(
        "/metrics",
        [("Accept", "application/openmetrics-text;version=1.0.0,text/plain;q=0.5")],
    )
    answer = metrics_response(manager, openmetrics)
    assert dict(answer.headers)["Content-Type"].startswith("application/openmetrics-text")
    assert answer.body.endswith(b"# EOF\n")


@pytest.mark.parametrize(
    "accept",
    [
        "application/openmetrics-text; version=abc",
        "text/plain; version=x.y",
        "application/openmetrics-text; version=" + "9" * 5000,
        "\x00\x01;;;,,,=",
        "*/*",
    ],
)
def test_a_garbage_accept_header_gets_a_normal_answer(accept: str) -> None:
    request = Handshake.from_target("/metrics", [("Accept", accept)])
    answer = metrics_response(ConnectionManager(), request)
    assert answer.status == 200
    content_type = dict(answer.headers)["Content-Type"]
    assert len(content_type) < 120  # nothing of the client's header echoed
    assert "abc" not in content_type and "999" not in content_type


def test_another_registry_is_served_beside_the_manager() -> None:
    registry = CollectorRegistry()
    Counter("app_jobs", "Jobs done.", registry=registry).inc(3)
    answer = metrics_response(ConnectionManager(), Handshake("/metrics"), registry=registry)
    samples = parse(answer.body.decode())
    assert value(samples, "app_jobs_total") == 3
    assert ("wsroom_connections", ()) in samples


async def test_a_scrape_from_another_thread_reads_on_the_manager_s_loop() -> None:
    manager = ConnectionManager()
    await manager.start()
    try:
        registry = _registry_of(MetricsCollector(manager))
        threads: list[str] = []
        original = manager.statistics

        def statistics() -> Statistics:
            threads.append(threading.current_thread().name)
            return original()

        manager.statistics = statistics  # type: ignore[method-assign]
        text = await asyncio.to_thread(generate_latest, registry)
        assert b"wsroom_connections 0.0" in text
        assert threads[-1] == threading.current_thread().name  # this loop's thread
    finally:
        await manager.shutdown()


# Garbage from clients over real sockets: every label stays in its set.


async def test_clients_sending_garbage_cannot_grow_any_label_set() -> None:
    from wsroom.adapters.websockets import metrics_endpoint, serve

    manager = ConnectionManager(authenticate=user_from_query, limits=Limits.without_rate_limits())
    async with serve(manager, "127.0.0.1", 0, process_request=metrics_endpoint(manager)) as server:
        port = server.sockets[0].getsockname()[1]
        url = f"ws://127.0.0.1:{port}"
        codes = [1000, 1001, 1003, 1007, 1011, 3000, 3999, 4000, 4321, 4999]
        for index, code in enumerate(codes):
            client = await connect_as(url, f"user{index}")
            for garbage in ("{", "[]", '{"type": 5}', '{"type": "nope' + "x" * 500 + '"}'):
                await client.send(garbage)
            await client.send(json.dumps({"type": "\u202e" * 10, "room": "r" * 64}))
            await client.send({"type": "message", "room": "not-joined", "data": 1})
            await client.ws.close(code, "bye " * 20)
        for path in ("/ws", "/ws?user=" + "x" * 200, "/ws?user=%00"):
            await http_request(port, path, headers="Upgrade: websocket\r\nConnection: Upgrade\r\n")
        await wait_for(lambda: not manager.connections)
        status, _, body = await http_request(port, "/metrics")
        assert status == 200, body
        samples = parse(body.decode())
        check_bounded(samples)
        application = value(samples, "wsroom_closes_total", initiator="client", code="application")
        assert application == 5  # 3000, 3999, 4000, 4321, 4999
        assert value(samples, "wsroom_closes_total", initiator="client", code="1000") == 1
        assert value(samples, "wsroom_errors_sent_total", code="invalid_json") == len(codes)
        series = [key for key in samples if key[0] == "wsroom_closes_total"]
        assert len(series) <= 6, series


# The adapters' helpers.


async def test_the_threading_adapter_serves_the_metrics() -> None:
    from wsroom.adapters import websockets_sync

    manager = ConnectionManager()
    with websockets_sync.serve(
        manager,
        "127.0.0.1",
        0,
        process_request=websockets_sync.metrics_endpoint(manager, "/internal/metrics"),
    ) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            port = server.socket.getsockname()[1]
            client = await Client.connect(f"ws://127.0.0.1:{port}")
            status, headers, body = await http_request(port, "/internal/metrics")
            assert status == 200, body
            assert headers["content-type"].startswith("text/plain; version=0.0.4")
            assert value(parse(body.decode()), "wsroom_connections") == 1
            assert (await http_request(port, "/metrics"))[0] != 200  # only the path given
            await client.close()
        finally:
            await asyncio.to_thread(server.shutdown)
            await asyncio.to_thread(thread.join, TIMEOUT)


async def test_the_starlette_route_serves_the_metrics() -> None:
    from starlette.applications import Starlette

    from tests.helpers import uvicorn_server
    from wsroom.adapters.starlette import metrics_route, routes

    manager = ConnectionManager()

    def with_token(request: Handshake) -> bool:
        return request.headers.get("authorization") == "Bearer s3cret"

    app = Starlette(routes=[metrics_route(manager, authorize=with_token), *routes("/ws", manager)])
    async with uvicorn_server(manager, app) as server:
        port = server.servers[0].sockets[0].getsockname()[1]
        client = await Client.connect(f"ws://127.0.0.1:{port}")
        token = "Authorization: Bearer s3cret\r\n"
        assert (await http_request(port, "/metrics"))[0] == 403
        status, headers, body = await http_request(port, "/metrics", headers=token)
        assert status == 200, body
        assert value(parse(body.decode()), "wsroom_connections") == 1
        status, headers, body = await http_request(port, "/metrics", method="HEAD", headers=token)
        assert status == 200 and body == b""
        assert int(headers["content-length"]) > 1000
        assert (await http_request(port, "/metrics", method="POST", headers=token))[0] == 405
        await client.close()


async def test_the_plain_asgi_app_serves_the_metrics_beside_the_rooms() -> None:
    """``metrics_app`` as the application ``WSRoomApp`` hands other paths to: no framework."""
    from tests.helpers import uvicorn_server
    from wsroom.adapters.asgi import WSRoomApp, metrics_app

    manager = ConnectionManager()
    app = WSRoomApp(manager, path="/ws", app=metrics_app(manager))
    async with uvicorn_server(manager, app) as server:
        port = server.servers[0].sockets[0].getsockname()[1]
        client = await Client.connect(f"ws://127.0.0.1:{port}")
        status, headers, body = await http_request(port, "/metrics")
        assert status == 200, body
        assert headers["content-type"].startswith("text/plain; version=0.0.4")
        assert value(parse(body.decode()), "wsroom_connections") == 1
        status, headers, body = await http_request(port, "/metrics", method="HEAD")
        assert status == 200 and body == b""
        assert int(headers["content-length"]) > 1000
        assert (await http_request(port, "/metrics", method="POST"))[0] == 405
        await client.close()


# A known load over real sockets, scraped over HTTP.


def banned_or_named(handshake: Handshake) -> str | None:
    """``?user=`` names the user; ``banned`` is refused with 403, no name with 401."""
    from wsroom import HandshakeRejected

    user = user_from_query(handshake)
    if user == "banned":
        raise HandshakeRejected(403, "Forbidden")
    return user


async def test_the_counters_follow_a_known_load() -> None:
    from tests.reliability.peers import open_non_reader, pin_send_buffer
    from wsroom.adapters.websockets import metrics_endpoint, serve

    clients, messages, flood, burst = 4, 3, 15, 10
    # Every handshake this test makes but the last: the clients, the flooder, the slow
    # reader, one refused with 401 and one with 403. The next is refused with 429.
    handshakes = clients + 4
    limits = Limits(
        max_queue_bytes=32 * 1024,
        rate=0.01,
        rate_burst=burst,
        user_rate=None,
        address_rate=None,
        handshake_rate=0.01,
        handshake_burst=handshakes,
    )
    manager = ConnectionManager(authenticate=banned_or_named, limits=limits)
    async with serve(manager, "127.0.0.1", 0, process_request=metrics_endpoint(manager)) as server:
        port = server.sockets[0].getsockname()[1]
        url = f"ws://127.0.0.1:{port}"

        async def scrape() -> Samples:
            status, _, body = await http_request(port, "/metrics")
            assert status == 200, body
            samples = parse(body.decode())
            check_bounded(samples)
            return samples

        # N clients join one room, one after the other.
        users = [await connect_as(url, f"user{i}") for i in range(clients)]
        for client in users:
            await client.join("lobby")
        first = await scrape()
        assert value(first, "wsroom_connections") == clients
        assert value(first, "wsroom_users") == clients
        assert value(first, "wsroom_rooms") == 1
        assert value(first, "wsroom_room_memberships") == clients
        assert value(first, "wsroom_frames_received_total") == clients  # the joins
        assert value(first, "wsroom_messages_published_total") == 0
        # Each join's presence went to the members already there: 0 + 1 + 2 + 3.
        assert value(first, "wsroom_deliveries_total") == clients * (clients - 1) / 2

        # M messages from each, every member gets every one.
        sent_bytes = 0
        for client in users:
            for index in range(messages):
                ref = client.next_ref()
                frame = {"type": "message", "room": "lobby", "data": {"n": index}, "ref": ref}
                sent_bytes += len(json.dumps(frame))
                await client.send(frame)
        for client in users:
            got = 0
            while got < clients * messages:
                got += (await client.recv())["type"] == "message"
        second = await scrape()
        published = clients * messages
        assert value(second, "wsroom_messages_published_total") == published
        assert (
            value(second, "wsroom_frames_received_total")
            - value(first, "wsroom_frames_received_total")
            == published
        )
        assert (
            value(second, "wsroom_received_bytes_total")
            - value(first, "wsroom_received_bytes_total")
            == sent_bytes
        )
        deliveries = value(second, "wsroom_deliveries_total") - value(
            first, "wsroom_deliveries_total"
        )
        assert deliveries == published * clients
        frames_sent = value(second, "wsroom_frames_sent_total") - value(
            first, "wsroom_frames_sent_total"
        )
        assert frames_sent == deliveries + published  # and one ack each
        assert value(second, "wsroom_sent_bytes_total") > value(first, "wsroom_sent_bytes_total")

        # A client sending faster than its budget: the burst passes, the rest is refused.
        flooder = await connect_as(url, "flooder")
        for _ in range(flood):
            await flooder.send({"type": "ping", "ref": flooder.next_ref()})
        answers = [(await flooder.recv())["type"] for _ in range(flood)]
        assert answers.count("pong") == burst
        assert answers.count("error") == flood - burst

        # Refused handshakes: no user (401), a banned one (403), then one too many (429).
        for path, status in (("/ws", 401), ("/ws?user=banned", 403)):
            answer = await http_request(
                port,
                path,
                headers=(
                    "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                ),
            )
            assert answer[0] == status, answer

        # A client that stops reading, evicted when its queue overflows.
        slow = await open_non_reader(url, ["lobby"], path="/ws?user=slow")
        await wait_for(lambda: manager.statistics().memberships == clients + 1)
        pin_send_buffer(port, slow.local_port, 4096)
        slow_conn = next(conn for conn in manager.connections if conn.user == "slow")
        readers = [asyncio.create_task(_drain(client)) for client in users]
        broadcasts = 0
        try:
            async with asyncio.timeout(TIMEOUT * 4):
                while not slow_conn.closed:
                    await manager.broadcast("lobby", "x" * 4000)
                    broadcasts += 1
                    await asyncio.sleep(0)  # the writers run, as between client frames
        finally:
            for task in readers:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
        print(f"evicted after {broadcasts} broadcasts")
        third = await scrape()
        assert value(third, "wsroom_evictions_total", reason="queue_full") == 1
        assert value(third, "wsroom_evictions_total", reason="write_timeout") == 0
        assert value(third, "wsroom_closes_total", initiator="server", code="1013") == 1
        assert value(third, "wsroom_messages_published_total") == published + broadcasts
        assert value(third, "wsroom_rate_limited_frames_total") == flood - burst
        assert value(third, "wsroom_errors_sent_total", code="rate_limited") == flood - burst
        assert value(third, "wsroom_handshakes_refused_total", status="401") == 1
        assert value(third, "wsroom_handshakes_refused_total", status="403") == 1
        assert value(third, "wsroom_handshakes_refused_total", status="429") == 0
        assert value(third, "wsroom_connections") == clients + 1  # and the flooder
        assert value(third, "wsroom_room_memberships") == clients
        assert value(third, "wsroom_dropped_frames_total") == 0

        # The address has spent its handshakes: 429, and the counters move with it.
        import websockets

        with pytest.raises(websockets.InvalidStatus) as refused:
            await connect_as(url, "late")
        assert refused.value.response.status_code == 429
        fourth = await scrape()
        assert value(fourth, "wsroom_handshakes_refused_total", status="429") == 1
        for key, counted in third.items():
            if key[0].endswith("_total"):
                assert fourth.get(key, 0.0) >= counted, key  # counters never go down

        # Everyone leaves: the gauges fall back, the closes are counted by code.
        slow.close()
        for client in [*users, flooder]:
            await client.close()
        await wait_for(lambda: not manager.connections)
        last = await scrape()
        assert value(last, "wsroom_connections") == 0
        assert value(last, "wsroom_room_memberships") == 0
        assert value(last, "wsroom_rooms") == 0
        assert value(last, "wsroom_closes_total", initiator="client", code="1000") == clients + 1
        assert value(last, "wsroom_backplane_up", backplane="memory") == 1


async def _drain(client: Client) -> None:
    """Read and drop whatever ``client`` gets, until cancelled."""
    while True:
        await client.ws.recv()


# The demo.


@pytest.mark.parametrize("transport", ["asyncio", "sync", "starlette"])
async def test_the_demo_serves_metrics_that_follow_its_clients(transport: str) -> None:
    import websockets

    from tests.helpers import demo_command

    async with demo_command("--transport", transport) as (port, _):
        status, _, body = await http_request(port, "/metrics")
        assert status == 200, body
        before = parse(body.decode())
        assert value(before, "wsroom_connections") == 0
        url = f"ws://127.0.0.1:{port}"
        alice = await Client.connect(url, "/ws?name=alice")
        bob = await Client.connect(url, "/ws?name=bob")
        await alice.join("lobby")
        await bob.join("lobby")
        await alice.send({"type": "message", "room": "lobby", "data": "hi"})
        assert (await bob.recv_type("message"))["data"] == "hi"
        with pytest.raises(websockets.InvalidStatus) as refused:
            await Client.connect(url, "/ws?name=admin")  # one of the page's own labels
        assert refused.value.response.status_code == 403
        after = parse((await http_request(port, "/metrics"))[2].decode())
        check_bounded(after)
        assert value(after, "wsroom_connections") == 2
        assert value(after, "wsroom_room_memberships") == 2
        assert value(after, "wsroom_messages_published_total") == 1
        assert value(after, "wsroom_frames_received_total") == 3
        assert value(after, "wsroom_handshakes_refused_total", status="403") == 1
        await alice.close()
        await bob.close()


def test_the_demo_shows_its_metrics_to_this_machine_only() -> None:
    from wsroom.demo import _from_this_machine

    assert _from_this_machine(Handshake("/metrics", remote_address=("127.0.0.1", 1)))
    assert _from_this_machine(Handshake("/metrics", remote_address=("::1", 1)))
    assert not _from_this_machine(Handshake("/metrics", remote_address=("192.168.1.5", 1)))
    assert not _from_this_machine(Handshake("/metrics", remote_address=("not an ip", 1)))
    assert not _from_this_machine(Handshake("/metrics"))


async def test_the_demo_s_metrics_follow_redis_going_down_and_back() -> None:
    from tests.helpers import demo_command
    from tests.redis_support import private_redis

    with private_redis() as redis:
        async with demo_command("--redis", redis.url) as (port, _):

            async def backplane() -> tuple[float, float | None, float]:
                samples = parse((await http_request(port, "/metrics"))[2].decode())
                check_bounded(samples)
                key = ("wsroom_backplane_round_trip_seconds", (("backplane", "redis"),))
                return (
                    value(samples, "wsroom_backplane_up", backplane="redis"),
                    samples.get(key),
                    value(samples, "wsroom_backplane_reconnects_total", backplane="redis"),
                )

            async def until(predicate: Any) -> tuple[float, float | None, float]:
                async with asyncio.timeout(TIMEOUT * 4):
                    while not predicate(state := await backplane()):  # noqa: ASYNC110
                        await asyncio.sleep(0.1)  # a scrape is the only way to ask
                return state

            up, round_trip, reconnects = await until(lambda s: s[1] is not None)
            assert up == 1 and reconnects == 0
            assert round_trip is not None and 0 <= round_trip < TIMEOUT
            redis.kill()
            await until(lambda s: s[0] == 0)
            redis.start()
            up, _, reconnects = await until(lambda s: s[0] == 1 and s[2] >= 1)
            assert reconnects == 1


# docs/operating.md's programs.


TOKEN_HEADER = "Authorization: Bearer t0k3n\r\n"


@contextlib.contextmanager
def operating_page(name: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """``docs_src/operating/<name>``, loaded as its page says to save it, with the
    scraper's token set to ``t0k3n``."""
    from tests.test_docs_code import DOCS_SRC, load, on_path

    with on_path(DOCS_SRC / "operating"):
        module = load(f"operating/{name}")
        if "metrics_token" in sys.modules:
            monkeypatch.setattr(sys.modules["metrics_token"], "TOKEN", "t0k3n")
        yield module


async def check_scrapes(port: int, url: str) -> None:
    """/metrics refuses a request without the token and counts a client for one with it."""
    assert (await http_request(port, "/metrics"))[0] == 403
    client = await Client.connect(url)
    try:
        status, _, body = await http_request(port, "/metrics", headers=TOKEN_HEADER)
        assert status == 200, body
        assert value(parse(body.decode()), "wsroom_connections") == 1
    finally:
        await client.close()


@pytest.mark.timeout(30)
async def test_operating_metrics_on_the_asyncio_server(monkeypatch: pytest.MonkeyPatch) -> None:
    from wsroom.adapters import websockets as adapter

    with operating_page("metrics_asyncio.py", monkeypatch) as module:
        started: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        @contextlib.asynccontextmanager
        async def serve(manager: ConnectionManager, host: str, port: int, **options: Any) -> Any:
            assert (host, port) == ("", 8765)
            async with adapter.serve(manager, "127.0.0.1", 0, **options) as server:
                started.set_result(server.sockets[0].getsockname()[1])
                yield server

        monkeypatch.setattr(module, "serve", serve)
        task = asyncio.create_task(module.main())
        try:
            port = await asyncio.wait_for(started, TIMEOUT)
            await check_scrapes(port, f"ws://127.0.0.1:{port}")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, TIMEOUT)


@pytest.mark.timeout(30)
async def test_operating_metrics_on_the_threaded_server(monkeypatch: pytest.MonkeyPatch) -> None:
    from wsroom.adapters import websockets_sync

    servers: list[websockets_sync.Server] = []

    @contextlib.contextmanager
    def serve(manager: ConnectionManager, host: str, port: int, **options: Any) -> Any:
        assert (host, port) == ("", 8765)
        with websockets_sync.serve(manager, "127.0.0.1", 0, **options) as server:
            servers.append(server)
            yield server

    with operating_page("metrics_threaded.py", monkeypatch) as module:
        monkeypatch.setattr(module, "websockets_sync", SimpleNamespace(serve=serve))
        thread = threading.Thread(target=module.main, daemon=True)
        thread.start()
        try:
            await wait_for(lambda: bool(servers))
            port = servers[0].socket.getsockname()[1]
            await check_scrapes(port, f"ws://127.0.0.1:{port}")
            assert (await http_request(port, "/wsroom.js"))[0] == 200
        finally:
            if servers:
                await asyncio.to_thread(servers[0].shutdown)
            await asyncio.to_thread(thread.join, TIMEOUT)
        assert not thread.is_alive()


@pytest.mark.timeout(30)
async def test_operating_metrics_on_starlette(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.helpers import uvicorn_server

    with operating_page("metrics_starlette.py", monkeypatch) as module:
        async with uvicorn_server(module.manager, module.app) as server:
            port = server.servers[0].sockets[0].getsockname()[1]
            await check_scrapes(port, f"ws://127.0.0.1:{port}")


@pytest.mark.timeout(30)
async def test_operating_metrics_on_a_port_of_their_own(monkeypatch: pytest.MonkeyPatch) -> None:
    import prometheus_client

    from wsroom.adapters import websockets as adapter

    registry = CollectorRegistry()
    exporters: list[Any] = []

    def start_http_server(port: int, addr: str) -> None:
        assert (port, addr) == (9100, "10.0.0.5")
        exporters.append(prometheus_client.start_http_server(0, "127.0.0.1", registry))

    started: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    @contextlib.asynccontextmanager
    async def serve(manager: ConnectionManager, host: str, port: int) -> Any:
        async with adapter.serve(manager, "127.0.0.1", 0) as server:
            started.set_result(server.sockets[0].getsockname()[1])
            yield server

    with operating_page("metrics_own_port.py", monkeypatch) as module:
        monkeypatch.setattr(
            module,
            "prometheus_client",
            SimpleNamespace(REGISTRY=registry, start_http_server=start_http_server),
        )
        monkeypatch.setattr(module, "serve", serve)
        task = asyncio.create_task(module.main())
        try:
            port = await asyncio.wait_for(started, TIMEOUT)
            client = await Client.connect(f"ws://127.0.0.1:{port}")
            exporter, _ = exporters[0]
            # prometheus_client's server reads the counters from its own thread.
            status, _, body = await http_request(exporter.server_port, "/metrics")
            assert status == 200, body
            assert value(parse(body.decode()), "wsroom_connections") == 1
            await client.close()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, TIMEOUT)
            for exporter, thread in exporters:
                exporter.shutdown()
                exporter.server_close()
                await asyncio.to_thread(thread.join, TIMEOUT)


def test_the_metrics_reference_names_every_metric_and_nothing_else() -> None:
    from tests.helpers import ROOT

    page = (ROOT / "docs" / "operating.md").read_text(encoding="utf-8")
    section = page.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(wsroom_\w+)` \| (counter|gauge) \| ([^|]*) \|", section, re.M)
    documented = {name: (kind, labels.strip()) for name, kind, labels in rows}
    assert list(documented) == [info.name for info in METRICS]
    for info in METRICS:
        labels = ", ".join(f"`{label}`" for label in info.labels) or "none"
        assert documented[info.name] == (info.type, labels), info.name
    known = {info.name for info in METRICS}
    # Every name the page uses (in its PromQL too) is one wsroom exposes.
    for name in set(re.findall(r"\bwsroom_\w+", section)):
        assert name in known, name
