"""`cluster-dev N` / `cluster-dev stop`: a local cluster to try cluster mode on one machine.

One nats-server (loopback, a free port, JetStream with `sync_interval: always`, its data under
`<var>/cluster-dev/nats/`) and N daemons, node-1 ... node-N, each with its own var directory
`<var>/cluster-dev/node-<i>/` (its own socket and databases). What runs is written to
`<var>/cluster-dev/cluster.json`, which `cluster-dev stop` reads. Not for production: a real
cluster runs its own NATS servers (docs/CLUSTER.md, "Three hosts").
"""
from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

import orjson

from ..config import load_config
from ..launcher import start_in_background
from .local_nats import start_nats_server, stop_nats_server
from .output import EXIT_FAILED, EXIT_OK, error
from .process import wait_until_gone
from .stop import ask_to_shut_down

MAX_NODES = 9


def cluster_dev(config: dict, args: argparse.Namespace) -> int:
    home = Path(config["daemon"]["var_dir"]) / "cluster-dev"
    if args.what == "stop":
        return stop_cluster(home)
    try:
        count = int(args.what)
    except ValueError:
        error(f"cluster-dev takes a number of nodes (1-{MAX_NODES}) or `stop`, not {args.what!r}")
        return EXIT_FAILED
    if not 1 <= count <= MAX_NODES:
        error(f"cluster-dev starts 1 to {MAX_NODES} nodes")
        return EXIT_FAILED
    if (home / "cluster.json").exists():
        error(f"a dev cluster is already recorded in {home / 'cluster.json'}: "
              "`daemon_control.py cluster-dev stop` first")
        return EXIT_FAILED
    home.mkdir(parents=True, exist_ok=True)
    nats, url = start_nats_server(home / "nats", log_file=home / "nats" / "nats-server.log")
    running = {"nats": {"pid": nats.pid, "url": url}, "nodes": []}
    for index in range(1, count + 1):
        node_id, var_dir = f"node-{index}", home / f"node-{index}"
        environ = {**os.environ, "KSI_CLUSTER_NATS_URL": url, "KSI_NODE_ID": node_id}
        node_config, _ = load_config(args.config, {"var_dir": str(var_dir)}, environ)
        os.environ.update(KSI_CLUSTER_NATS_URL=url, KSI_NODE_ID=node_id)  # for the daemon
        code = start_in_background(node_config, ["--var-dir", str(var_dir)])
        if code != 0:
            error(f"{node_id} did not start; stopping the dev cluster")
            _record(home, running)
            stop_cluster(home)
            return EXIT_FAILED
        running["nodes"].append({"node_id": node_id, "var_dir": str(var_dir),
                                 "socket": node_config["daemon"]["socket_path"],
                                 "pid": _pid_of(node_config)})
    _record(home, running)
    print(f"\nNATS: {url} (data {home / 'nats'})")
    for node in running["nodes"]:
        print(f"{node['node_id']}: KSI_SOCKET_PATH={node['socket']} (var {node['var_dir']})")
    first = running["nodes"][0]["socket"]
    print(f"""
Try it:
  echo '{{"event":"state:set","data":{{"key":"k","value":1}}}}' | nc -N -U {first}
  echo '{{"event":"state:get","data":{{"key":"k"}}}}' | nc -N -U {running["nodes"][-1]["socket"]}
Stop it with `daemon_control.py cluster-dev stop`.""")
    return EXIT_OK


def stop_cluster(home: Path) -> int:
    record = home / "cluster.json"
    if not record.exists():
        print(f"no dev cluster is recorded in {record}; nothing to stop.")
        return EXIT_OK
    running = orjson.loads(record.read_bytes())
    for node in running["nodes"]:
        pid = node["pid"]
        if pid and not ask_to_shut_down(node["socket"], pid, None, 15.0):
            os.kill(pid, signal.SIGKILL)
            wait_until_gone(pid, 5.0)
    stop_nats_server(running["nats"]["pid"])
    print(f"NATS (pid {running['nats']['pid']}) stopped.")
    record.unlink()
    return EXIT_OK


def _record(home: Path, running: dict) -> None:
    (home / "cluster.json").write_bytes(orjson.dumps(running, option=orjson.OPT_INDENT_2))


def _pid_of(config: dict) -> int | None:
    from .process import read_pid_file
    return read_pid_file(config)
