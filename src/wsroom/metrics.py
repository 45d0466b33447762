"""Prometheus metrics for a :class:`~wsroom.ConnectionManager`.

Needs ``prometheus-client``: ``pip install "wsroom[metrics]"``.

Nothing is counted for Prometheus on the hot path: the manager keeps plain integer
counters where each event happens (:meth:`ConnectionManager.statistics
<wsroom.ConnectionManager.statistics>` reads them), and :class:`MetricsCollector` turns
one :class:`~wsroom.Statistics` snapshot into metric families when Prometheus scrapes.
:func:`metrics_response` is the whole HTTP answer, whatever the server; each adapter has
a thin helper around it (``wsroom.adapters.websockets.metrics_endpoint``,
``wsroom.adapters.websockets_sync.metrics_endpoint``,
``wsroom.adapters.starlette.metrics_route``).

No metric carries a user, a room or a connection as a label: each label takes its values
from a small fixed set (see :data:`METRICS`), whatever clients send.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

try:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.exposition import choose_encoder
    from prometheus_client.registry import Collector, CollectorRegistry
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "wsroom.metrics needs prometheus-client: pip install 'wsroom[metrics]'"
    ) from exc

from ._delivery import Statistics
from .frames import ErrorCode

if TYPE_CHECKING:
    from .handshake import Handshake
    from .manager import ConnectionManager

__all__ = [
    "METRICS",
    "MetricInfo",
    "MetricsCollector",
    "MetricsResponse",
    "metric_families",
    "metrics_response",
]


@dataclass(frozen=True, slots=True)
class MetricInfo:
    """One metric wsroom exposes."""

    name: str
    """Its name in the exposition (counters end in ``_total``)."""
    type: Literal["counter", "gauge"]
    """The Prometheus metric type."""
    labels: tuple[str, ...]
    """Its label names; each takes its values from a bounded set."""
    help: str
    """What it measures (the ``# HELP`` line)."""


def _counter(name: str, help: str, *labels: str) -> MetricInfo:
    return MetricInfo(name, "counter", labels, help)


def _gauge(name: str, help: str, *labels: str) -> MetricInfo:
    return MetricInfo(name, "gauge", labels, help)


METRICS: tuple[MetricInfo, ...] = (
    _gauge("wsroom_connections", "Open connections in this process."),
    _gauge("wsroom_users", "Distinct identified users connected to this process."),
    _gauge("wsroom_rooms", "Rooms with members in this process."),
    _gauge("wsroom_room_memberships", "Connections in rooms, each counted once per room."),
    _gauge("wsroom_queued_frames", "Frames waiting in all outgoing queues."),
    _gauge("wsroom_queued_bytes", "Bytes waiting in all outgoing queues."),
    _counter("wsroom_messages_published_total", "Room messages stored and broadcast."),
    _counter("wsroom_frames_received_total", "Client frames received."),
    _counter("wsroom_received_bytes_total", "Bytes of the client frames received."),
    _counter(
        "wsroom_frames_sent_total",
        "Frames queued to clients (fan-out deliveries, answers, errors, events).",
    ),
    _counter("wsroom_sent_bytes_total", "Bytes of the frames queued to clients."),
    _counter("wsroom_deliveries_total", "Frames queued by fan-outs, one per recipient."),
    _counter(
        "wsroom_dropped_frames_total", "Frames dropped from full queues (overflow=drop_oldest)."
    ),
    _counter(
        "wsroom_evictions_total",
        "Clients closed with 1013 for not reading fast enough, by reason.",
        "reason",
    ),
    _counter(
        "wsroom_closes_total",
        "Connections ended, by who closed first and close code.",
        "initiator",
        "code",
    ),
    _counter("wsroom_rate_limited_frames_total", "Client frames refused with rate_limited."),
    _counter("wsroom_handshakes_refused_total", "Handshakes refused, by HTTP status.", "status"),
    _counter("wsroom_errors_sent_total", "Error frames sent, by code.", "code"),
    _gauge(
        "wsroom_backplane_up",
        "Whether the backplane answered its last operation (1) or not (0).",
        "backplane",
    ),
    _gauge(
        "wsroom_backplane_round_trip_seconds",
        "Time the backplane took to answer its last health check.",
        "backplane",
    ),
    _counter(
        "wsroom_backplane_reconnects_total",
        "Times the backplane's bus came back after it was lost.",
        "backplane",
    ),
    _counter(
        "wsroom_backplane_dropped_messages_total",
        "Malformed messages received on the backplane's bus and dropped.",
        "backplane",
    ),
    _counter("wsroom_gaps_total", "Gap frames fanned out to rooms: messages members missed."),
)
"""Every metric :class:`MetricsCollector` exposes, in the order it exposes them."""

# Shown at 0 before the first one, so that rate() and increase() see the first increment.
_REFUSAL_STATUSES = (400, 401, 403, 429, 500, 503)


def metric_families(stats: Statistics) -> list[Metric]:
    """The metric families of :data:`METRICS` for one :class:`~wsroom.Statistics` snapshot."""
    families = {info.name: _family(info) for info in METRICS}

    def add(name: str, value: float, *labels: str) -> None:
        families[name].add_metric(labels, value)

    add("wsroom_connections", stats.connections)
    add("wsroom_users", stats.users)
    add("wsroom_rooms", stats.rooms)
    add("wsroom_room_memberships", stats.memberships)
    add("wsroom_queued_frames", stats.queued_frames)
    add("wsroom_queued_bytes", stats.queued_bytes)
    add("wsroom_messages_published_total", stats.messages_published)
    add("wsroom_frames_received_total", stats.frames_received)
    add("wsroom_received_bytes_total", stats.bytes_received)
    add("wsroom_frames_sent_total", stats.frames_sent)
    add("wsroom_sent_bytes_total", stats.bytes_sent)
    add("wsroom_deliveries_total", stats.deliveries)
    add("wsroom_dropped_frames_total", stats.dropped_frames)
    add("wsroom_evictions_total", stats.evictions - stats.write_timeouts, "queue_full")
    add("wsroom_evictions_total", stats.write_timeouts, "write_timeout")
    for (initiator, code), count in sorted(stats.closes.items()):
        add("wsroom_closes_total", count, _bounded(initiator, ("server", "client")), code)
    refusals = dict.fromkeys(_REFUSAL_STATUSES, 0)
    refusals.update(stats.handshakes_refused_by_status)
    for status, count in sorted(refusals.items()):
        add("wsroom_handshakes_refused_total", count, _status_label(status))
    errors = {code.value: 0 for code in ErrorCode}
    errors.update(stats.errors_by_code)
    for code, count in sorted(errors.items()):
        add("wsroom_errors_sent_total", count, code)
    add("wsroom_rate_limited_frames_total", stats.rate_limited)
    backplane = stats.backplane
    add("wsroom_backplane_up", 1 if stats.backplane_available else 0, backplane)
    if stats.backplane_round_trip is not None:
        add("wsroom_backplane_round_trip_seconds", stats.backplane_round_trip, backplane)
    add("wsroom_backplane_reconnects_total", stats.backplane_reconnects, backplane)
    add("wsroom_backplane_dropped_messages_total", stats.backplane_dropped, backplane)
    add("wsroom_gaps_total", stats.gaps)
    return list(families.values())


def _family(info: MetricInfo) -> CounterMetricFamily | GaugeMetricFamily:
    if info.type == "counter":
        return CounterMetricFamily(info.name, info.help, labels=info.labels)
    return GaugeMetricFamily(info.name, info.help, labels=info.labels)


def _bounded(value: str, allowed: tuple[str, ...]) -> str:
    return value if value in allowed else "other"


def _status_label(status: int) -> str:
    return str(status) if 400 <= status <= 599 else "other"


class MetricsCollector(Collector):
    """A ``prometheus_client`` collector reading a manager's counters at scrape time.

    Register it in a registry of your own, or in ``prometheus_client``'s default one,
    which ``prometheus_client.start_http_server`` serves::

        prometheus_client.REGISTRY.register(MetricsCollector(manager))

    A scrape from another thread (``prometheus_client``'s own server, the threading
    adapter) reads the counters on the manager's event loop, through
    :attr:`~wsroom.ConnectionManager.from_thread`. One manager per registry: two would
    expose the same names.

    Args:
        manager: The manager whose counters are exposed.
    """

    def __init__(self, manager: ConnectionManager) -> None:
        self.manager = manager
        """The manager whose counters are exposed."""

    def collect(self) -> Iterable[Metric]:
        """The metric families of :data:`METRICS`, read now."""
        return metric_families(_statistics(self.manager))

    def describe(self) -> Iterable[Metric]:
        """The metric families, without samples (what registering needs to know)."""
        return [_family(info) for info in METRICS]


def _statistics(manager: ConnectionManager) -> Statistics:
    """The manager's statistics, read on its event loop when it runs in another thread:
    the connections and rooms it walks change only there."""
    loop = manager.loop
    if loop is None or loop.is_closed() or not loop.is_running():
        return manager.statistics()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        return manager.statistics()
    return manager.from_thread.call(manager.statistics)


def _format(accept: str | None) -> str:
    """What the encoder is chosen from: OpenMetrics 1.0.0 when the client accepts
    OpenMetrics at all, else Prometheus text. Never the client's own parameters, which
    ``prometheus_client`` echoes into the response header (and fails on when malformed)."""
    if accept is not None:
        for media in accept.split(","):
            if media.partition(";")[0].strip().lower() == "application/openmetrics-text":
                return "application/openmetrics-text; version=1.0.0"
    return ""


class _Forward(Collector):
    """Another registry's metrics, served beside the manager's."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        yield from self._registry.collect()


@dataclass(frozen=True)
class MetricsResponse:
    """An HTTP answer for a metrics request, whatever the server that sends it."""

    status: int
    """200, 403 when ``authorize`` refused the request, 405 for a method other than
    ``GET`` or ``HEAD``."""
    headers: list[tuple[str, str]]
    body: bytes
    """Empty for a ``HEAD``."""


Authorize = Callable[["Handshake"], bool]
"""``authorize(request) -> bool``: whether a request may read the metrics; ``request`` is a
:class:`~wsroom.Handshake` made from the HTTP request (path, query, headers, peer
address). A plain function: it runs on the server's thread or loop and must not block."""


def metrics_response(
    manager: ConnectionManager,
    request: Handshake,
    *,
    method: str = "GET",
    registry: CollectorRegistry | None = None,
    authorize: Authorize | None = None,
) -> MetricsResponse:
    """The answer to a request for the metrics, in the format its ``Accept`` header asks
    for (Prometheus text, or OpenMetrics).

    The metrics show no user data (no user, room or connection appears in them), but
    they tell how loaded and how healthy the server is: serve them on a port only your
    network reaches, or pass ``authorize``.

    Args:
        manager: The manager whose metrics are rendered.
        request: The HTTP request, as a :class:`~wsroom.Handshake`.
        method: The request's method: ``GET``, or ``HEAD`` for the headers alone.
        registry: Another registry whose metrics are served too (``prometheus_client``'s
            default ``REGISTRY`` for the process metrics, or your application's own).
            Do not register a :class:`MetricsCollector` of the same manager in it.
        authorize: Decides whether ``request`` may read the metrics; refused ones get 403.
    """
    text = [("Content-Type", "text/plain; charset=utf-8"), ("Cache-Control", "no-store")]
    if method not in ("GET", "HEAD"):
        return MetricsResponse(405, [*text, ("Allow", "GET, HEAD")], b"Method Not Allowed\n")
    if authorize is not None and not authorize(request):
        return MetricsResponse(403, text, b"Forbidden\n")
    target = CollectorRegistry(auto_describe=False)
    target.register(MetricsCollector(manager))
    if registry is not None:
        target.register(_Forward(registry))
    encoder, content_type = choose_encoder(_format(request.headers.get("accept")))
    body = encoder(target)
    headers = [
        ("Content-Type", content_type),
        ("Cache-Control", "no-store"),
        ("Content-Length", str(len(body))),
    ]
    return MetricsResponse(200, headers, b"" if method == "HEAD" else body)
