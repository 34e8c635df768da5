"""Metrics by plugin (docs/OPERATIONS.md, "Metrics"): events/s, p50/p95/p99, errors, queue
depths and memory per plugin in `system:metrics`, the same in the Prometheus text format, and
the loopback-only rule of `daemon.metrics_http`. Against the real daemon in this process; the
HTTP endpoint, a real Prometheus and the terminal table are in test_metrics_prometheus.py."""
from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import data_of, error_of
from ksi_daemon.plugins.system.memory_by_plugin import Attribution
from ksi_daemon.plugins.system.metrics_http import loopback_address

PLUGINS = Path(__file__).parent / "plugins" / "metered"
pytestmark = pytest.mark.daemon("inprocess")


@pytest.fixture
def metered(daemon_factory):
    return daemon_factory({"daemon": {"plugin_dirs": [str(PLUGINS)]}})


def test_each_plugin_has_its_requests_errors_rates_and_percentiles(metered):
    with metered.client() as client:
        for i in range(30):
            data_of(client.request("state:set", {"key": f"k{i}", "value": i}))
        error_of(client.request("state:set", {"value": "no key"}))  # a validation error
        for _ in range(3):
            error_of(client.request("hoard:fail"))
        metrics = data_of(client.request("system:metrics"))
    state, hoard = metrics["plugins"]["state"], metrics["plugins"]["hoard"]
    assert state["count"] == 31 and state["errors"] == 1
    assert hoard["count"] == 3 and hoard["errors"] == 3
    assert 0 < state["p50_ms"] <= state["p95_ms"] <= state["p99_ms"]
    assert state["events_per_s"] > 0 and metrics["events_per_s"] >= state["events_per_s"]
    assert metrics["events"]["state:set"]["plugin"] == "state"


def test_queue_depths_come_from_each_plugin_and_one_that_fails_costs_only_its_own(metered):
    with metered.client() as client:
        for _ in range(2):
            data_of(client.request("hoard:keep", {"size": 10}))
        # Answered after its commit, and after the writes the state plugin queued at start
        # (the audit's retention): none is waiting any more.
        data_of(client.request("state:set", {"key": "settled", "value": 1}))
        plugins = data_of(client.request("system:metrics"))["plugins"]
    assert plugins["hoard"]["queues"] == {"kept": 2}  # (a value that is no number is left out)
    assert set(plugins["completion"]["queues"]) == {"queued", "processing"}
    assert plugins["state"]["queues"] == {"writes_waiting": 0}
    assert "broken_depths" not in plugins  # it raised: logged, left out, nothing else lost
    assert "queue_depths_failed" in metered.read_output()


def test_memory_by_plugin_attributes_what_a_plugin_allocates_during_the_sample(metered):
    with metered.client() as sampler, metered.client() as worker:
        sampler.send("system:metrics", {"memory_by_plugin": True, "sample_s": 1.0},
                     correlation_id="sample")
        # A round trip first: by its reply the sample's task has started (and traces).
        data_of(worker.request("system:health"))
        for _ in range(5):  # while it traces: 5 x 200 kB kept by the hoard plugin
            data_of(worker.request("hoard:keep", {"size": 200_000}))
        memory = data_of(sampler.recv_reply())["memory_by_plugin"]
        later = data_of(worker.request("system:metrics"))
    assert memory["tracing"] == "sample" and memory["sample_s"] == 1.0
    assert memory["plugins"]["hoard"]["bytes"] >= 1_000_000
    assert memory["traced_bytes"] >= memory["plugins"]["hoard"]["bytes"]
    assert later["memory_by_plugin"] == memory  # the last sample stays until the next one


def test_the_prometheus_format_carries_the_same_figures(metered):
    with metered.client() as client:
        for i in range(4):
            data_of(client.request("state:set", {"key": f"p{i}", "value": i}))
        reply = data_of(client.request("system:metrics", {"format": "prometheus"}))
    assert reply["content_type"].startswith("text/plain; version=")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(reply["text"])
               for s in family.samples}
    assert samples[("ksi_plugin_events_total", (("plugin", "state"),))] == 4
    assert samples[("ksi_event_requests_total", (("event", "state:set"), ("plugin", "state")))] == 4
    assert samples[("ksi_plugin_queue_depth", (("plugin", "hoard"), ("queue", "kept")))] == 0
    assert ("ksi_plugin_latency_seconds", (("plugin", "state"), ("quantile", "0.99"))) in samples
    assert samples[("ksi_connections", ())] == 1


def test_a_wrong_metrics_request_gets_a_coded_error_and_the_daemon_goes_on(metered):
    with metered.client() as client:
        assert error_of(client.request("system:metrics", {"format": "xml"}))["code"] == \
            "validation_error"
        assert error_of(client.request("system:metrics", {"memory_by_plugin": True,
                                                          "sample_s": 600}))["code"] == \
            "validation_error"
        assert data_of(client.request("system:metrics"))["plugins"]["system"]["errors"] == 2


def test_a_metrics_endpoint_off_loopback_is_refused_with_a_logged_reason(daemon_factory):
    daemon = daemon_factory({"daemon": {"metrics_http": "0.0.0.0:0"}})
    with daemon.client() as client:
        data_of(client.request("state:set", {"key": "still", "value": "working"}))
        assert data_of(client.request("system:metrics"))["metrics_http"] is None
    log = daemon.read_output()
    assert "metrics_http_refused" in log and "the metrics endpoint listens on loopback only" in log


@pytest.mark.parametrize("address, expected", [
    ("127.0.0.1:9464", ("127.0.0.1", 9464)), ("localhost:0", ("127.0.0.1", 0)),
    ("[::1]:9464", ("::1", 9464)), ("127.5.0.1:80", ("127.5.0.1", 80))])
def test_loopback_addresses_are_accepted(address, expected):
    assert loopback_address(address) == expected


@pytest.mark.parametrize("address", ["0.0.0.0:9464", "10.1.2.3:9464", "[::]:9464",
                                     "example.com:9464", "127.0.0.1", "127.0.0.1:http",
                                     "127.0.0.1:70000"])
def test_other_addresses_are_refused(address):
    with pytest.raises(ValueError):
        loopback_address(address)


def test_an_allocation_belongs_to_the_innermost_plugin_frame(tmp_path):
    package, single = tmp_path / "pkg", tmp_path / "single.py"
    attribution = Attribution([(str(package) + "/", "pkg"), (str(single), "single")])
    assert attribution.plugin_of(str(package / "store.py")) == "pkg"
    assert attribution.plugin_of(str(single)) == "single"
    assert attribution.plugin_of(str(tmp_path / "pkg_other" / "x.py")) is None
    assert attribution.plugin_of(str(tmp_path / "single.pyc")) is None


def test_trace_memory_reads_memory_by_plugin_every_time_and_stops_with_the_daemon(
        daemon_factory):
    import tracemalloc
    daemon = daemon_factory({"daemon": {"plugin_dirs": [str(PLUGINS)], "trace_memory": True}})
    with daemon.client() as client:
        data_of(client.request("hoard:keep", {"size": 300_000}))  # before any reading
        memory = data_of(client.request("system:metrics"))["memory_by_plugin"]
    assert memory["tracing"] == "always" and memory["sample_s"] is None
    assert memory["plugins"]["hoard"]["bytes"] >= 300_000
    daemon.stop()
    assert not tracemalloc.is_tracing()
