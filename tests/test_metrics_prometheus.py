"""The metrics as an operator uses them (docs/OPERATIONS.md, "Metrics"): a daemon process
serving `/metrics` on loopback, scraped by a real Prometheus server (Debian's `prometheus`,
which run_tests.sh installs where it can), the Grafana dashboard's every query answered from
that scrape, and the guide's `python tools/monitor_plugin_performance.py`."""
from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT, DaemonProcess, data_of

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
DASHBOARD = ROOT / "monitoring" / "ksi-plugin-dashboard.json"
METRIC_NAME = re.compile(r"\bksi_[a-z0-9_]+")


def wait_for(check, timeout: float = 30.0, every: float = 0.2):
    """`check()`'s first truthy answer, polled; AssertionError with the last answer if none."""
    deadline, answer = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        answer = check()
        if answer:
            return answer
        time.sleep(every)
    raise AssertionError(f"not within {timeout} s; last answer: {answer!r}")


def http_get(url: str) -> tuple[str, str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.headers["Content-Type"], response.read().decode()


def scraped_samples(address: str) -> dict[str, list]:
    _type, text = http_get(f"http://{address}/metrics")
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


@pytest.fixture(scope="module")
def daemon_with_endpoint():
    workdir = Path(tempfile.mkdtemp(prefix="ksi-", dir="/tmp"))
    daemon = DaemonProcess(workdir, {"daemon": {"metrics_http": "127.0.0.1:0"}}).start()
    address = data_of(daemon.request("system:metrics"))["metrics_http"]
    yield daemon, address
    daemon.stop()
    shutil.rmtree(workdir, ignore_errors=True)


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PrometheusServer:
    """/usr/bin/prometheus scraping `target` every second, with its own storage and port."""

    def __init__(self, workdir: Path, target: str):
        self.workdir, self.port = workdir, free_loopback_port()
        (workdir / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: ksi\n    metrics_path: /metrics\n"
            f"    static_configs:\n      - targets: ['{target}']\n")
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=open(workdir / "prometheus.out", "wb"), stderr=subprocess.STDOUT)

    def query(self, expr: str) -> dict:
        _type, body = http_get(f"http://127.0.0.1:{self.port}/api/v1/query?"
                               + urllib.parse.urlencode({"query": expr}))
        return orjson.loads(body)

    def values(self, expr: str) -> list[tuple[dict, float]]:
        try:
            answer = self.query(expr)
        except OSError:  # not listening yet
            return []
        return [(r["metric"], float(r["value"][1])) for r in answer["data"]["result"]]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def prometheus(daemon_with_endpoint):
    if not Path(PROMETHEUS).is_file():
        pytest.skip(f"no Prometheus server at {PROMETHEUS}: run_tests.sh installs Debian's "
                    "`prometheus` package where apt-get and root (or sudo) are available")
    _daemon, address = daemon_with_endpoint
    workdir = Path(tempfile.mkdtemp(prefix="ksi-prom-", dir="/tmp"))
    server = PrometheusServer(workdir, address)
    try:
        wait_for(lambda: server.values('up{job="ksi"} == 1'), timeout=60)
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def test_metrics_endpoint_serves_the_prometheus_text_format(daemon_with_endpoint):
    daemon, address = daemon_with_endpoint
    with daemon.client() as client:
        for i in range(5):
            data_of(client.request("state:set", {"key": f"http{i}", "value": i}))
    content_type, text = http_get(f"http://{address}/metrics")
    assert content_type.startswith("text/plain")
    families = {family.name: family for family in text_string_to_metric_families(text)}
    state = [s for s in families["ksi_plugin_events"].samples if s.labels == {"plugin": "state"}]
    assert state and state[0].value >= 5
    assert address.startswith("127.0.0.1:")


def test_a_real_prometheus_scrapes_the_daemon_and_answers_a_query(daemon_with_endpoint,
                                                                  prometheus):
    daemon, _address = daemon_with_endpoint
    before = data_of(daemon.request("system:metrics"))["plugins"]["state"]["count"]
    with daemon.client() as client:
        for i in range(20):
            data_of(client.request("state:set", {"key": f"prom{i}", "value": i}))
    answered = wait_for(lambda: [value for labels, value in prometheus.values(
        'ksi_plugin_events_total{plugin="state"}') if value >= before + 20])
    assert answered
    # A rate Prometheus computes itself from the counter: events per second by plugin.
    assert wait_for(lambda: prometheus.values('rate(ksi_plugin_events_total{plugin="state"}[5s])'))


def dashboard_queries() -> list[tuple[str, str]]:
    body = orjson.loads(DASHBOARD.read_bytes())
    return [(panel["title"], target["expr"]) for panel in body["dashboard"]["panels"]
            for target in panel["targets"]]


def test_the_dashboard_is_a_grafana_import_body_with_queries_in_every_panel():
    body = orjson.loads(DASHBOARD.read_bytes())
    assert body["overwrite"] is True and body["inputs"][0]["pluginId"] == "prometheus"
    panels = body["dashboard"]["panels"]
    assert panels and all(panel["targets"] for panel in panels)
    titles = " ".join(panel["title"].lower() for panel in panels)
    for wanted in ("throughput", "p50", "p95", "p99", "error", "queue", "memory"):
        assert wanted in titles


def test_every_dashboard_query_uses_exported_metrics_and_prometheus_answers_it(
        daemon_with_endpoint, prometheus):
    daemon, address = daemon_with_endpoint
    # Memory by plugin is exported once sampled: sample it, as an operator would.
    data_of(daemon.request("system:metrics", {"memory_by_plugin": True, "sample_s": 0.2}))
    scraped = scraped_samples(address)
    exported = set(scraped) | {name.removesuffix("_total") for name in scraped}
    for title, expr in dashboard_queries():
        names = set(METRIC_NAME.findall(expr))
        assert names, f"panel {title!r}: {expr} names no ksi metric"
        missing = names - exported
        assert not missing, f"panel {title!r}: {expr} uses {missing}, not in the scrape"
    wait_for(lambda: prometheus.values("ksi_plugin_memory_bytes"))  # scraped since the sample
    for title, expr in dashboard_queries():
        answer = prometheus.query(expr)
        assert answer["status"] == "success", (title, expr, answer)


def test_the_guides_performance_monitor_prints_a_table_of_plugins(daemon_with_endpoint):
    daemon, _address = daemon_with_endpoint
    with daemon.client() as client:
        for i in range(3):
            data_of(client.request("state:set", {"key": f"table{i}", "value": i}))
    requests = data_of(daemon.request("system:metrics"))["plugins"]["state"]["count"]
    result = subprocess.run(
        [sys.executable, "tools/monitor_plugin_performance.py", "--once",
         "--socket", str(daemon.socket_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["plugin", "events/s", "p50", "ms", "p95", "ms", "p99", "ms",
                                "requests", "errors", "queued"]
    state = next(line.split() for line in lines if line.startswith("state "))
    assert int(state[5]) >= requests and state[6] == "0"
    assert any(line.startswith("all: ") for line in lines)


def test_the_monitor_says_when_no_daemon_answers(tmp_path):
    result = subprocess.run(
        [sys.executable, "tools/monitor_plugin_performance.py", "--once",
         "--socket", str(tmp_path / "none.sock")],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "connection_error" in result.stderr


def test_the_endpoint_closes_at_shutdown(workdir):
    daemon = DaemonProcess(workdir, {"daemon": {"metrics_http": "127.0.0.1:0"}}).start()
    address = data_of(daemon.request("system:metrics"))["metrics_http"]
    assert "ksi_uptime_seconds" in scraped_samples(address)
    assert daemon.stop(signal.SIGTERM) == 0
    host, port = address.rsplit(":", 1)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, int(port)), timeout=5).close()
