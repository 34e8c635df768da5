"""Cluster mode as a real deployment configures it: TLS to the NATS server (its certificate
signed by a CA the nodes are given) and a token, against a local nats-server that requires both.
The certificates are made by `openssl` (Debian's openssl package) for this test alone."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from cluster_nodes import wait_for
from conftest import DaemonProcess, data_of, error_of
from ksi_daemon.control.local_nats import free_loopback_port, run_nats_server, write_config

TOKEN = "s3cret-token-for-the-test"
pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is missing")


def openssl(*args: str, cwd) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certificates(directory) -> dict:
    """A CA, and a certificate it signed for 127.0.0.1 (EC keys: made in milliseconds)."""
    directory.mkdir()
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=ksi-test-ca", cwd=directory)
    openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=127.0.0.1", cwd=directory)
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "san.ext",
            cwd=directory)
    return {name: str(directory / f"{name}.pem") for name in ("ca", "server")} | {
        "server_key": str(directory / "server.key")}


@pytest.fixture
def secured_nats(workdir):
    certificates = make_certificates(workdir / "certificates")
    port = free_loopback_port()
    config = write_config(workdir / "nats", port)
    with config.open("a") as conf:
        conf.write("tls {\n"
                   f'  cert_file: "{certificates["server"]}"\n'
                   f'  key_file: "{certificates["server_key"]}"\n'
                   "}\n"
                   f'authorization {{ token: "{TOKEN}" }}\n')
    process = run_nats_server(config, port, workdir / "nats" / "nats-server.log")
    yield f"tls://127.0.0.1:{port}", certificates["ca"]
    process.terminate()
    process.wait(10)


def secured_node(workdir, url: str, node_id: str, settings: dict) -> DaemonProcess:
    (workdir / node_id).mkdir()
    return DaemonProcess(workdir / node_id, {"cluster": settings},
                         env={"KSI_CLUSTER_NATS_URL": url, "KSI_NODE_ID": node_id}).start()


def cluster_health(node: DaemonProcess) -> dict:
    return data_of(node.request("system:health"))["cluster"]


def test_nodes_with_the_ca_and_the_token_share_state_over_tls(workdir, secured_nats):
    url, ca = secured_nats
    a = secured_node(workdir, url, "node-a", {"tls_ca": ca, "token": TOKEN})
    b = secured_node(workdir, url, "node-b", {"tls_ca": ca, "token": TOKEN})
    try:
        for node in (a, b):
            wait_for(lambda: cluster_health(node)["jetstream"], seen=lambda: cluster_health(node))
        assert data_of(a.request("state:set", {"namespace": "tls", "key": "k", "value": 7}))
        wait_for(lambda: b.request("state:get", {"namespace": "tls", "key": "k"})
                 .get("data", {}).get("value") == 7)
    finally:
        a.stop()
        b.stop()


def test_a_node_with_a_wrong_token_or_without_the_ca_says_why_and_serves_nothing(
        workdir, secured_nats):
    url, ca = secured_nats
    wrong_token = secured_node(workdir, url, "node-x", {"tls_ca": ca, "token": "not-it"})
    no_ca = secured_node(workdir, url, "node-y", {"token": TOKEN})
    try:
        for node, why in ((wrong_token, "authorization"), (no_ca, "certificate")):
            wait_for(lambda: why in (cluster_health(node)["error"] or "").lower(),
                     seen=lambda: cluster_health(node))
            assert cluster_health(node)["jetstream"] is False
            refused = error_of(node.request("state:set", {"namespace": "tls", "key": "k",
                                                          "value": 1}))
            assert refused["code"] == "unavailable"
    finally:
        wrong_token.stop()
        no_ca.stop()
