"""Prometheus metrics: counted always (cheaply), exposed only with ``--metrics-listen``."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from modeld._errors import StartupError

if TYPE_CHECKING:
    from modeld.sessions._manager import SessionManager

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_TOKEN_BUCKETS = (0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 1)


class _SessionsCollector(Collector):
    """Read at scrape time from the session manager (plain ints: safe from the HTTP thread)."""

    def __init__(self, sessions: SessionManager) -> None:
        self._sessions = sessions

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        s, lot = self._sessions, self._sessions.lot
        open_ = s.session_count()
        live = s.live_count()
        gauge = GaugeMetricFamily("modeld_sessions", "Open sessions, by state", labels=["state"])
        gauge.add_metric(["live"], live)
        gauge.add_metric(["parked"], open_ - live)
        yield gauge
        parked = GaugeMetricFamily("modeld_parked_bytes", "Parked KV, by tier", labels=["tier"])
        parked.add_metric(["ram"], lot.ram_bytes)
        parked.add_metric(["disk"], lot.disk_bytes)
        yield parked
        yield GaugeMetricFamily("modeld_queue_depth", "Engine jobs waiting", value=s.queue_depth())
        yield GaugeMetricFamily(
            "modeld_clients_attached", "Clients holding a lifeline", value=s.client_count()
        )
        cache = CounterMetricFamily(
            "modeld_prefix_cache",
            "EnsurePrefix calls that reused resident KV (hit) or not",
            labels=["result"],
        )
        cache.add_metric(["hit"], s.prefix_hits)
        cache.add_metric(["miss"], s.prefix_misses)
        yield cache
        moves = CounterMetricFamily(
            "modeld_parking", "Sessions parked / restored", labels=["event"]
        )
        moves.add_metric(["park"], lot.parks)
        moves.add_metric(["restore"], lot.restores)
        yield moves


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.rpcs = Counter(
            "modeld_rpcs",
            "RPCs answered, by method and gRPC status code",
            ["method", "code"],
            registry=r,
        )
        self.rpc_seconds = Histogram(
            "modeld_rpc_duration_seconds",
            "Unary RPC time, by method",
            ["method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft_seconds = Histogram(
            "modeld_ttft_seconds",
            "Decode call to first token",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.token_seconds = Histogram(
            "modeld_token_seconds",
            "Time per generated token after the first",
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "modeld_tokens",
            "Tokens by what was done: prefilled, reused, shared, generated",
            ["kind"],
            registry=r,
        )
        self.decode_rows = Histogram(
            "modeld_decode_batch_rows",
            "Sessions' tokens computed per decode engine call (1: not batched)",
            buckets=(1, 2, 4, 8, 16, 32),
            registry=r,
        )
        self.renew_seconds = Histogram(
            "modeld_lease_renew_seconds", "Lease renewal time", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.leadership = Counter(
            "modeld_leadership_changes",
            "Leadership won, released, or lost (fenced)",
            ["event"],
            registry=r,
        )

    def watch_sessions(self, sessions: SessionManager) -> None:
        self.registry.register(_SessionsCollector(sessions))

    def serve(self, listen: str) -> str:
        """Start the HTTP endpoint on loopback ``HOST:PORT`` (port 0: any); returns the URL."""
        host, _, port = listen.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        try:
            if not ipaddress.ip_address(host).is_loopback:
                raise StartupError(f"--metrics-listen {listen}: only loopback addresses")
            server, _ = start_http_server(int(port), host, registry=self.registry)
        except ValueError:
            raise StartupError(f"--metrics-listen {listen!r}: expected HOST:PORT") from None
        except OSError as exc:
            raise StartupError(f"--metrics-listen {listen}: {exc.strerror or exc}") from None
        return f"http://{host}:{server.server_port}/metrics"
