"""`system:metrics` figures as Prometheus metrics (docs/OPERATIONS.md, "Metrics", lists them).

A custom collector: the metric families are built from one `system:metrics` reading when
Prometheus scrapes (or `system:metrics {"format": "prometheus"}` is asked), so the hot path
keeps doing only what event_stats does. prometheus_client writes the text format.
"""
from __future__ import annotations

from typing import Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

QUANTILES = (("0.5", "p50_ms"), ("0.95", "p95_ms"), ("0.99", "p99_ms"))
CONTENT_TYPE = CONTENT_TYPE_LATEST


class FiguresCollector:
    """Collects from `read_figures()`, a `system:metrics` reply (a dict), at each scrape."""

    def __init__(self, read_figures: Callable[[], dict]):
        self.read_figures = read_figures

    def collect(self) -> Iterator[Metric]:
        return iter(metric_families(self.read_figures()))


def render(figures: dict) -> str:
    """The text format of one reading (what `/metrics` serves)."""
    registry = CollectorRegistry()
    registry.register(FiguresCollector(lambda: figures))
    return generate_latest(registry).decode()


def metric_families(figures: dict) -> list[Metric]:
    return [*_daemon_families(figures), *_event_families(figures.get("events", {})),
            *_plugin_families(figures.get("plugins", {})),
            *_memory_families(figures.get("memory_by_plugin"))]


def _gauge(name: str, documentation: str, value) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _daemon_families(figures: dict) -> Iterator[Metric]:
    queues, stalls = figures.get("queues", {}), figures.get("loop_stalls") or {}
    yield _gauge("ksi_uptime_seconds", "Seconds since the daemon started",
                 figures.get("uptime_s", 0))
    yield CounterMetricFamily("ksi_events", "Requests and events the router handled",
                              value=figures.get("events_total", 0))
    yield _gauge("ksi_events_per_second", "Events per second over the last 10 s "
                 "(the daemon's own figure; rate(ksi_events_total[1m]) is Prometheus's)",
                 figures.get("events_per_s") or 0)
    yield _gauge("ksi_connections", "Clients connected", figures.get("connections", 0))
    yield _gauge("ksi_in_flight_requests", "Requests started and not yet answered",
                 queues.get("in_flight_requests", 0))
    yield _gauge("ksi_output_buffered_bytes", "Bytes written to clients and not yet read",
                 queues.get("output_buffered_bytes", 0))
    yield CounterMetricFamily("ksi_pushes_dropped", "Pushes dropped for slow subscribers",
                              value=queues.get("pushes_dropped", 0))
    yield _gauge("ksi_resident_memory_bytes", "The daemon process's resident memory",
                 figures.get("rss_bytes", 0))
    yield CounterMetricFamily("ksi_loop_stalls", "Times the event loop stalled past the "
                              "threshold", value=stalls.get("count", 0))
    yield CounterMetricFamily("ksi_loop_stall_seconds", "Time the event loop spent stalled",
                              value=(stalls.get("total_ms") or 0) / 1000)


def _event_families(events: dict) -> Iterator[Metric]:
    requests = CounterMetricFamily("ksi_event_requests", "Requests per event",
                                   labels=["event", "plugin"])
    errors = CounterMetricFamily("ksi_event_errors", "Error replies per event",
                                 labels=["event", "plugin"])
    latency = GaugeMetricFamily("ksi_event_latency_seconds", "Response time per event over its "
                                "last 2048 requests", labels=["event", "quantile"])
    for name, figures in sorted(events.items()):
        labels = [name, figures.get("plugin") or ""]
        requests.add_metric(labels, figures["count"])
        errors.add_metric(labels, figures["errors"])
        _add_quantiles(latency, [name], figures)
    return requests, errors, latency


def _plugin_families(plugins: dict) -> Iterator[Metric]:
    requests = CounterMetricFamily("ksi_plugin_events", "Requests answered by the plugin's "
                                   "handlers", labels=["plugin"])
    errors = CounterMetricFamily("ksi_plugin_errors", "Error replies of the plugin's handlers",
                                 labels=["plugin"])
    rate = GaugeMetricFamily("ksi_plugin_events_per_second", "The plugin's events per second "
                             "over the last 10 s", labels=["plugin"])
    latency = GaugeMetricFamily("ksi_plugin_latency_seconds", "Response time of the plugin's "
                                "handlers (their last 2048 requests each)",
                                labels=["plugin", "quantile"])
    depth = GaugeMetricFamily("ksi_plugin_queue_depth", "Work the plugin holds waiting, by "
                              "queue", labels=["plugin", "queue"])
    for name, figures in sorted(plugins.items()):
        requests.add_metric([name], figures["count"])
        errors.add_metric([name], figures["errors"])
        rate.add_metric([name], figures.get("events_per_s") or 0)
        _add_quantiles(latency, [name], figures)
        for queue, value in sorted((figures.get("queues") or {}).items()):
            depth.add_metric([name, queue], value)
    return requests, errors, rate, latency, depth


def _memory_families(memory: dict | None) -> Iterator[Metric]:
    if not memory:  # never sampled, and not traced always: nothing to report
        return ()
    held = GaugeMetricFamily("ksi_plugin_memory_bytes", "Python memory allocated by the "
                             "plugin's code and still held (tracemalloc; see docs)",
                             labels=["plugin"])
    for name, figures in memory["plugins"].items():
        held.add_metric([name], figures["bytes"])
    taken = _gauge("ksi_plugin_memory_sampled_timestamp_seconds", "When memory by plugin "
                   "was last read", memory["taken_at"])
    return held, taken


def _add_quantiles(family: GaugeMetricFamily, labels: list[str], figures: dict) -> None:
    for quantile, key in QUANTILES:
        if figures.get(key) is not None:
            family.add_metric([*labels, quantile], figures[key] / 1000)
