"""Configuration: defaults < config file < KSI_* environment < command line.

The config file is JSON in the format of the deployment guide (`~/.ksi/daemon.json` unless
`--config PATH` or `KSI_CONFIG` names another). Unknown keys are reported as warnings; a value of
the wrong type stops start-up with a message naming the key and where the value came from.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .config_guide import apply_guide_keys

DEFAULT_CONFIG_FILE = Path("~/.ksi/daemon.json")
MAX_SOCKET_PATH = 107  # sun_path is 108 bytes on Linux, including the terminating NUL
# An installed copy has no source tree to keep its var/ in: it lives beside the config file.
INSTALLED_VAR_DIR = "~/.ksi/var"


def default_var_dir() -> str:
    """The project's var/: the one of the source tree this package was imported from.

    Not the working directory, so `daemon_control.py`, `python -m ksi_daemon` and every client
    find the same daemon wherever they are run. `ksi_client.find_socket_path` applies the same
    rule (the client does not import the daemon); a test pins that the two agree.
    """
    tree = Path(__file__).resolve().parent.parent
    return str(tree / "var") if (tree / "pyproject.toml").is_file() else INSTALLED_VAR_DIR


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="allow")


class DaemonSettings(_Section):
    var_dir: str = Field(default_factory=default_var_dir)
    socket_path: str | None = None
    plugin_dirs: list[str] = Field(default_factory=list)
    watch_plugins: bool = False  # reload plugin_dirs' plugins as they change (plugin_watch.py)
    watch_period_s: float = Field(1.0, gt=0)  # how often watch mode looks at plugin_dirs
    max_event_history: int = Field(1000, ge=0)
    max_event_history_bytes: int = Field(8 * 1024 * 1024, ge=0)
    event_timeout: float = Field(30.0, gt=0)
    shutdown_timeout: float = Field(10.0, ge=0)
    # How long `daemon_control.py stop` waits past the shutdown deadline, then after SIGTERM,
    # then after SIGKILL, before the next step (control/stop.py).
    stop_grace_s: float = Field(5.0, gt=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_events: bool = False
    max_line_bytes: int = Field(1024 * 1024, ge=1024)
    output_buffer_bytes: int = Field(4 * 1024 * 1024, ge=64 * 1024)
    slow_consumer_grace_s: float = Field(2.0, ge=0)
    allowed_uids: list[int] = Field(default_factory=list)
    # Connections the kernel queues before the daemon accepts them: a burst of clients larger
    # than this is refused (EAGAIN) until it drains. Capped by net.core.somaxconn.
    listen_backlog: int = Field(2048, ge=1, le=65535)
    # "127.0.0.1:9464": serve the metrics at http://127.0.0.1:9464/metrics (loopback only).
    metrics_http: str | None = None
    # Trace Python allocations from start-up, for memory by plugin (slow: docs/OPERATIONS.md).
    trace_memory: bool = False


class SocketSettings(_Section):
    allow: list[str] | None = None  # event patterns its clients may send; None: every event


class UnixTransportSettings(_Section):
    enabled: bool = True
    socket_dir: str | None = None  # events.sock (and control.sock) there, beside the main one
    compatibility_mode: bool = False
    sockets: dict[str, SocketSettings] = Field(default_factory=dict)
    # How often every socket's path is checked, and bound again when it is no longer ours.
    check_interval_s: float = Field(1.0, gt=0)


class TransportSettings(_Section):
    unix: UnixTransportSettings = Field(default_factory=UnixTransportSettings)


class UidRule(_Section):
    allow: list[str] | None = None  # event patterns this uid's clients may send; None: all


class Rate(_Section):
    per_s: float = Field(gt=0)
    burst: int = Field(ge=1)


class RateLimitSettings(_Section):
    # Generous: a client of another user or a runaway tool is slowed before it starves the
    # rest, a normal client never meets them. The daemon's own user is not limited unless
    # own_uid: a process of that user can stop the daemon anyway (docs/SECURITY.md).
    enabled: bool = True
    own_uid: bool = False
    connection: Rate = Field(default_factory=lambda: Rate(per_s=2000, burst=4000))
    uid: Rate = Field(default_factory=lambda: Rate(per_s=5000, burst=10000))
    completions: Rate = Field(default_factory=lambda: Rate(per_s=10, burst=20))


class PermissionSettings(_Section):
    uids: dict[str, UidRule] = Field(default_factory=dict)  # keyed by uid (a JSON key)
    rate_limits: RateLimitSettings = Field(default_factory=RateLimitSettings)


class ClusterSettings(_Section):
    """`cluster`: set `nats_url` (and `node_id`) and the daemon is a node of a cluster on NATS
    JetStream (docs/CLUSTER.md); left unset, nothing about the single daemon changes."""
    nats_url: str | None = None  # "nats://127.0.0.1:4222"; several, comma-separated
    node_id: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    # Credentials, at most one kind: user and password, a token, or a .creds file (NKEY/JWT).
    user: str | None = None
    password: str | None = None
    token: str | None = None
    creds_file: str | None = None
    # TLS: the CA that signed the server's certificate, and this node's own (mutual TLS).
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    state_bucket: str = Field("ksi_state", pattern=r"^[A-Za-z0-9_-]+$")
    # The stream of conversation turns, the KV bucket of agent checkpoints, the stream of the
    # state audit (docs/CLUSTER.md); every node of a cluster must name the same ones.
    conversation_stream: str = Field("KSI_CONVERSATIONS", pattern=r"^[A-Za-z0-9_-]+$")
    agent_bucket: str = Field("ksi_agents", pattern=r"^[A-Za-z0-9_-]+$")
    audit_stream: str = Field("KSI_STATE_AUDIT", pattern=r"^[A-Za-z0-9_-]+$")
    audit_keep_s: float = Field(30 * 86400.0, gt=0)  # the audit stream's records are kept so long
    audit_keep_records: int = Field(1_000_000, ge=1)  # and at most this many (the newest)
    replicas: int = Field(1, ge=1, le=5)  # copies of the bucket (3 on a 3-server NATS cluster)
    lease_bucket: str = Field("ksi_leases", pattern=r"^[A-Za-z0-9_-]+$")
    # An agent's lease lives this long unless renewed (every quarter of it); a node that could
    # not renew stops the agent after three quarters, another node resumes it after expiry.
    lease_ttl_s: float = Field(5.0, ge=1, le=300)
    # Every request to NATS gives up after this long and answers `unavailable`.
    request_timeout_s: float = Field(2.0, gt=0, le=60)
    connect_timeout_s: float = Field(2.0, gt=0, le=60)

    @model_validator(mode="after")
    def _a_node_needs_its_name(self):
        if self.nats_url and not self.node_id:
            raise ValueError("cluster.node_id (KSI_NODE_ID) must be set with cluster.nats_url")
        if self.token and (self.user or self.creds_file) or (self.user and self.creds_file):
            raise ValueError("give one kind of NATS credentials: user/password, token or "
                             "creds_file")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("cluster.tls_cert and cluster.tls_key go together")
        return self


class Settings(_Section):
    daemon: DaemonSettings = Field(default_factory=DaemonSettings)
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)
    transports: TransportSettings = Field(default_factory=TransportSettings)
    permissions: PermissionSettings = Field(default_factory=PermissionSettings)
    plugins: dict[str, dict[str, Any]] = Field(default_factory=dict)


# KSI_<NAME> overrides daemon.<name>; lists are os.pathsep-separated (plugin dirs) or commas.
_LIST_SEPARATORS = {"plugin_dirs": os.pathsep, "allowed_uids": ","}
# The environment names of the cluster settings a node is started with (docs/CLUSTER.md).
CLUSTER_ENVIRONMENT = {"KSI_CLUSTER_NATS_URL": "nats_url", "KSI_NODE_ID": "node_id"}


def load_config(config_path: str | None = None, overrides: dict[str, Any] | None = None,
                environ: dict[str, str] | None = None) -> tuple[dict, list[str]]:
    """Return (config as plain dicts with resolved absolute paths, warnings)."""
    environ = os.environ if environ is None else environ
    raw, origin = _read_file(config_path or environ.get("KSI_CONFIG"))
    try:
        guide_warnings = apply_guide_keys(raw)
    except ValueError as exc:
        raise ConfigError(f"invalid configuration:\n  {exc} (from {origin})") from None
    daemon = dict(raw.get("daemon") or {})
    origins = {key: origin for key in daemon}
    for name in DaemonSettings.model_fields:
        value = environ.get(f"KSI_{name.upper()}")
        if value is not None:
            daemon[name] = value.split(_LIST_SEPARATORS[name]) if name in _LIST_SEPARATORS \
                else value
            origins[name] = f"environment KSI_{name.upper()}"
    for name, value in (overrides or {}).items():
        if value is not None:
            daemon[name] = value
            origins[name] = "command line"
    cluster = dict(raw.get("cluster") or {})
    for variable, name in CLUSTER_ENVIRONMENT.items():
        if environ.get(variable):
            cluster[name] = environ[variable]
            origins[f"cluster.{name}"] = f"environment {variable}"
    raw = {**raw, "daemon": daemon, "cluster": cluster}
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False):
            key = ".".join(str(part) for part in error["loc"])
            source = origins.get(error["loc"][1]) if len(error["loc"]) > 1 and \
                error["loc"][0] == "daemon" else origins.get(key, origin)
            problems.append(f"{key}: {error['msg']} (from {source})")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems)) from None
    config = settings.model_dump()
    _resolve_paths(config)
    return config, guide_warnings + _unknown_keys(settings)


def _read_file(path: str | None) -> tuple[dict, str]:
    explicit = path is not None
    file = Path(path).expanduser() if explicit else DEFAULT_CONFIG_FILE.expanduser()
    if not file.exists():
        if explicit:
            raise ConfigError(f"config file {file} does not exist")
        return {}, "defaults"
    try:
        raw = orjson.loads(file.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ConfigError(f"config file {file} cannot be read as JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {file} must hold a JSON object")
    return raw, f"config file {file}"


def _resolve_paths(config: dict) -> None:
    daemon = config["daemon"]
    daemon["var_dir"] = str(Path(daemon["var_dir"]).expanduser().resolve())
    socket_path = daemon["socket_path"] or str(Path(daemon["var_dir"]) / "run" / "daemon.sock")
    socket_path = str(Path(socket_path).expanduser().absolute())
    if len(socket_path.encode()) > MAX_SOCKET_PATH:
        raise ConfigError(f"daemon.socket_path: {socket_path} is longer than the "
                          f"{MAX_SOCKET_PATH} bytes a Unix socket path may have; choose a "
                          "shorter KSI_VAR_DIR or KSI_SOCKET_PATH")
    daemon["socket_path"] = socket_path
    daemon["plugin_dirs"] = [str(Path(p).expanduser()) for p in daemon["plugin_dirs"] if p]


def _unknown_keys(settings: Settings) -> list[str]:
    warnings = []

    def walk(model: BaseModel, prefix: str) -> None:
        for key in model.model_extra or {}:
            warnings.append(f"unknown config key {prefix}{key} (ignored)")
        for name in type(model).model_fields:
            value = getattr(model, name)
            if isinstance(value, BaseModel):
                walk(value, f"{prefix}{name}.")
    walk(settings, "")
    return warnings
