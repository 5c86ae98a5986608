"""Prometheus metrics: counted always (cheaply), exposed only with ``--metrics-listen``."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from modeld._errors import StartupError
from modeld.sessions._stats import Stats

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_TOKEN_BUCKETS = (0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 1)
_LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class _SessionsCollector(Collector):
    """Read at scrape time (on the HTTP server's thread) from an immutable snapshot of the
    session layer's figures, never from its live structures."""

    def __init__(self, figures: Callable[[], Stats], queue_depth: Callable[[], int]):
        self._figures = figures
        self._queue_depth = queue_depth

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        s = self._figures()
        gauge = GaugeMetricFamily("modeld_sessions", "Open sessions, by state", labels=["state"])
        gauge.add_metric(["live"], s.sessions_live)
        gauge.add_metric(["parked"], s.sessions_parked)
        yield gauge
        parked = GaugeMetricFamily("modeld_parked_bytes", "Parked KV, by tier", labels=["tier"])
        parked.add_metric(["ram"], s.parked_ram_bytes)
        parked.add_metric(["disk"], s.parked_disk_bytes)
        yield parked
        yield GaugeMetricFamily(
            "modeld_queue_depth", "Engine jobs waiting", value=self._queue_depth()
        )
        yield GaugeMetricFamily(
            "modeld_clients_attached", "Clients holding a lifeline", value=s.clients_attached
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
        moves.add_metric(["park"], s.parks)
        moves.add_metric(["restore"], s.restores)
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
        self.model_load_seconds = Histogram(
            "modeld_model_load_seconds",
            "Time to load a model's weights, by model (loads that were kept)",
            ["model"],
            buckets=_LOAD_BUCKETS,
            registry=r,
        )
        self.model_loads = Counter(
            "modeld_model_loads",
            "Model loads by outcome: ok, failed, timeout",
            ["outcome"],
            registry=r,
        )
        self.model_unloads = Counter(
            "modeld_model_unloads",
            "Model unloads by reason: idle, lru (to make room), explicit (UnloadModel)",
            ["reason"],
            registry=r,
        )

    # the session layer's model pool counts its loads here (from the engine thread and the
    # loop; prometheus_client's metrics are thread-safe)
    def model_loaded(self, model: str, seconds: float) -> None:
        self.model_load_seconds.labels(model).observe(seconds)

    def model_load_ended(self, outcome: str) -> None:
        self.model_loads.labels(outcome).inc()

    def model_unloaded(self, reason: str) -> None:
        self.model_unloads.labels(reason).inc()

    def watch_sessions(self, figures: Callable[[], Stats], queue_depth: Callable[[], int]) -> None:
        """Report the session layer's figures at every scrape: ``figures`` must be safe to call
        from the HTTP server's thread (it returns an immutable snapshot)."""
        self.registry.register(_SessionsCollector(figures, queue_depth))

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
