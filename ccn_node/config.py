"""ccn.toml → msgspec Structs. Every error names the file and the key.

Secrets never live in the TOML: the JWT key and the model API key come from files (which must
not be readable by group or others) or from the environment. Relative paths are resolved
against the directory of the config file, so a data directory can be moved as a whole.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import time
import tomllib
from pathlib import Path
from typing import Any, Literal

import msgspec

DEFAULT_LISTEN = "127.0.0.1:8470"
ENV_CONFIG = "CCN_CONFIG"


class ConfigError(Exception):
    """A configuration problem, phrased for the operator: file, key, what was expected."""

    def __init__(self, file: str | os.PathLike[str], key: str | None, message: str) -> None:
        self.file = str(file)
        self.key = key
        self.message = message
        where = f"{self.file}: {key}: " if key else f"{self.file}: "
        super().__init__(where + message)


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class NodeSettings(_Section):
    name: str = "ccn-node"
    data_dir: str = "."
    listen: str = DEFAULT_LISTEN
    public_url: str = ""
    log_level: Literal["debug", "info", "warning", "error"] = "info"


class StorageSettings(_Section):
    database: str = "ccn.sqlite3"
    synchronous: Literal["normal", "full", "extra"] = "full"
    busy_timeout_ms: int = 5000
    readers: int = 4


class PlateSettings(_Section):
    path: str = "plate.md"


class ContextSettings(_Section):
    budget_tokens: int = 6000
    recent_turns: int = 12
    relevant_limit: int = 40


class ModelConfig(_Section):
    backend: Literal["auto", "offline", "anthropic", "openai"] = "auto"
    model: str = "claude-sonnet-4-6"
    max_tokens: int = 1024
    temperature: float | None = None
    base_url: str = ""
    api_key_file: str = ""
    timeout_s: float = 60.0
    max_retries: int = 2
    offline_latency_ms: float = 0.0
    pricing: dict[str, dict[str, float]] = {}


class AuthSettings(_Section):
    jwt_key_file: str = "keys/jwt.key"
    jwt_algorithm: Literal["HS256"] = "HS256"
    token_ttl_s: int = 30 * 24 * 3600
    issuer: str = "ccn-node"
    # Key rotation: tokens signed with these older keys stay valid for previous_key_grace_s after
    # the rotation (the modification time of jwt_key_file); SIGHUP re-reads all key files.
    previous_key_files: list[str] = []
    previous_key_grace_s: float = 7 * 24 * 3600.0


class TlsSettings(_Section):
    """HTTPS for the API: both files or neither; SIGHUP reloads them without closing the listener."""

    cert_file: str = ""  # PEM certificate chain
    key_file: str = ""   # PEM private key, mode 0600 (checked like every secret file)


class LimitSettings(_Section):
    max_body_bytes: int = 1024 * 1024
    max_ws_frame_bytes: int = 256 * 1024
    max_message_chars: int = 100_000
    requests_per_minute: int = 100
    burst: int = 20
    model_tokens_per_day: int = 2_000_000
    turn_wait_s: float = 120.0
    propose_timeout_s: float = 10.0


class ContinuitySettings(_Section):
    consensus_interval_s: float = 10.0
    outlier_threshold: float = 0.10
    instance_idle_timeout_s: float = 900.0
    validation: Literal["every", "first", "never"] = "first"
    validation_attempts: int = 3


class LedgerSettings(_Section):
    key_file: str = "keys/node.ed25519"
    block_entries: int = 1000
    block_seconds: float = 10.0


class BackupSettings(_Section):
    """Online backups (store/backup.py): every interval_s, keep the newest ``keep`` verified ones."""

    enabled: bool = True
    interval_s: float = 6 * 3600.0
    keep: int = 4
    dir: str = "backups"
    key_file: str = ""  # 32-byte key (raw, hex or base64), mode 0600; empty = backups are not encrypted
    step_pages: int = 1024  # pages copied per backup step; a pause follows each step
    step_pause_ms: float = 1.0


class RetentionSettings(_Section):
    """How long message content is kept (continuity/retention.py); per-user overrides are commands."""

    default_days: int = 90
    sweep_interval_s: float = 3600.0
    enabled: bool = True


class FederationPeer(_Section):
    """One pinned organisation (ledger/DESIGN.md "Federation")."""

    origin: str                    # the origin line of its checkpoints (its cluster.name, or node.name alone)
    vkeys: list[str]               # C2SP vkeys of its ledger key; several while a key rotates
    url: str = ""                  # base URL of its API; "" = only checked through gossip and its pushes
    witness_vkeys: list[str] = []  # cosignature/v1 vkeys of its nodes (they witness us and the others)


class FederationSettings(_Section):
    peers: list[FederationPeer] = []
    pull_interval_s: float = 30.0
    request_timeout_s: float = 5.0
    witnesses_required: int = 1    # k: a peer's checkpoint is witnessed when k of its witnesses cosigned it ...
    max_age_s: float = 3600.0      # ... within this many seconds
    witness_key_file: str = "keys/witness.ed25519"  # this node's own cosigning key (never shared)
    witness_name: str = ""         # "" = "<node.name>/witness"
    database: str = "witness.sqlite3"  # node-local witness state (never replicated, never restored)


class ClusterConfig(_Section):
    """Raft among peer nodes (replication/raft_log.py, DESIGN.md "Raft"); no peers = one node.

    Tunables left unset take ``ClusterSettings``' defaults, chosen and measured there.
    """

    address: str = ""  # this node's raft HOST:PORT, exactly as the peers list it
    peers: list[str] = []  # every member's raft HOST:PORT, identical on every node (self may be listed)
    secret_file: str = ""  # shared secret (pysyncobj password), mode 0600; required with peers
    name: str = ""  # the organisation's ledger origin, identical on every node; required with peers
    bind_address: str = ""  # default: address (never all interfaces)
    durability: Literal["fast", "fsync"] = "fsync"
    heartbeat_s: float | None = None
    election_min_s: float | None = None
    election_max_s: float | None = None
    leader_fallback_s: float | None = None
    connection_timeout_s: float | None = None
    connect_retry_s: float | None = None
    max_in_flight: int | None = None
    commands_queue_size: int | None = None
    compaction_min_entries: int | None = None
    compaction_min_time_s: float | None = None
    max_batch_bytes: int | None = None
    max_batch_commands: int | None = None
    tick_wait_s: float | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.peers)


class Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    node: NodeSettings = msgspec.field(default_factory=NodeSettings)
    storage: StorageSettings = msgspec.field(default_factory=StorageSettings)
    plate: PlateSettings = msgspec.field(default_factory=PlateSettings)
    context: ContextSettings = msgspec.field(default_factory=ContextSettings)
    model: ModelConfig = msgspec.field(default_factory=ModelConfig)
    auth: AuthSettings = msgspec.field(default_factory=AuthSettings)
    tls: TlsSettings = msgspec.field(default_factory=TlsSettings)
    limits: LimitSettings = msgspec.field(default_factory=LimitSettings)
    continuity: ContinuitySettings = msgspec.field(default_factory=ContinuitySettings)
    ledger: LedgerSettings = msgspec.field(default_factory=LedgerSettings)
    backup: BackupSettings = msgspec.field(default_factory=BackupSettings)
    retention: RetentionSettings = msgspec.field(default_factory=RetentionSettings)
    federation: FederationSettings = msgspec.field(default_factory=FederationSettings)
    cluster: ClusterConfig = msgspec.field(default_factory=ClusterConfig)

    # Set by load_config, not read from the file.
    source: str = ""

    @property
    def base_dir(self) -> Path:
        return Path(self.source).resolve().parent if self.source else Path.cwd()

    @property
    def data_dir(self) -> Path:
        return (self.base_dir / self.node.data_dir).resolve()

    def path(self, value: str) -> Path:
        """A path from the config, relative to the data directory."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.data_dir / p

    @property
    def database_path(self) -> Path:
        return self.path(self.storage.database)


_PATH_RE = re.compile(r"at `\$\.?([^`]*)`")


def _key_of(message: str) -> tuple[str | None, str]:
    """msgspec says "... - at `$.context.budget_tokens`"; return ("context.budget_tokens", "...")."""
    match = _PATH_RE.search(message)
    if not match:
        return None, message
    text = message[: match.start()].rstrip(" -")
    return match.group(1) or None, text


def parse_listen(value: str, *, file: str, key: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(file, key, f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def _check(cfg: Config, file: str) -> None:
    positive = {
        "storage.busy_timeout_ms": cfg.storage.busy_timeout_ms,
        "storage.readers": cfg.storage.readers,
        "context.budget_tokens": cfg.context.budget_tokens,
        "context.relevant_limit": cfg.context.relevant_limit,
        "model.max_tokens": cfg.model.max_tokens,
        "model.timeout_s": cfg.model.timeout_s,
        "auth.token_ttl_s": cfg.auth.token_ttl_s,
        "limits.max_body_bytes": cfg.limits.max_body_bytes,
        "limits.max_ws_frame_bytes": cfg.limits.max_ws_frame_bytes,
        "limits.max_message_chars": cfg.limits.max_message_chars,
        "limits.requests_per_minute": cfg.limits.requests_per_minute,
        "limits.burst": cfg.limits.burst,
        "limits.model_tokens_per_day": cfg.limits.model_tokens_per_day,
        "limits.turn_wait_s": cfg.limits.turn_wait_s,
        "limits.propose_timeout_s": cfg.limits.propose_timeout_s,
        "continuity.consensus_interval_s": cfg.continuity.consensus_interval_s,
        "continuity.instance_idle_timeout_s": cfg.continuity.instance_idle_timeout_s,
        "continuity.validation_attempts": cfg.continuity.validation_attempts,
        "ledger.block_entries": cfg.ledger.block_entries,
        "ledger.block_seconds": cfg.ledger.block_seconds,
        "backup.interval_s": cfg.backup.interval_s,
        "backup.keep": cfg.backup.keep,
        "backup.step_pages": cfg.backup.step_pages,
        "retention.default_days": cfg.retention.default_days,
        "retention.sweep_interval_s": cfg.retention.sweep_interval_s,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(file, key, f"must be greater than 0, got {value}")
    if cfg.backup.step_pause_ms < 0:
        raise ConfigError(file, "backup.step_pause_ms", "must be 0 or more")
    if not cfg.backup.dir.strip():
        raise ConfigError(file, "backup.dir", "must not be empty")
    if cfg.auth.previous_key_grace_s < 0:
        raise ConfigError(file, "auth.previous_key_grace_s", "must be 0 or more")
    if bool(cfg.tls.cert_file) != bool(cfg.tls.key_file):
        missing = "tls.key_file" if cfg.tls.cert_file else "tls.cert_file"
        raise ConfigError(file, missing, "tls.cert_file and tls.key_file are set together or not at all")
    if cfg.context.recent_turns < 0:
        raise ConfigError(file, "context.recent_turns", "must be 0 or more")
    if cfg.model.max_retries < 0:
        raise ConfigError(file, "model.max_retries", "must be 0 or more")
    if not 0 < cfg.continuity.outlier_threshold <= 1:
        raise ConfigError(file, "continuity.outlier_threshold", "must be in (0, 1]")
    if cfg.model.temperature is not None and not 0 <= cfg.model.temperature <= 1:
        raise ConfigError(file, "model.temperature", "must be between 0 and 1")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,99}", cfg.node.name):
        raise ConfigError(file, "node.name", "letters, digits, '.', '_', '-', '/'; 1 to 100 characters")
    parse_listen(cfg.node.listen, file=file, key="node.listen")
    _check_cluster(cfg.cluster, file)
    _check_federation(cfg, file)
    for model, prices in cfg.model.pricing.items():
        for name, price in prices.items():
            if name not in ("input", "output", "cache_write", "cache_read"):
                raise ConfigError(
                    file, f"model.pricing.{model}.{name}", "expected one of input, output, cache_write, cache_read"
                )
            if price < 0:
                raise ConfigError(file, f"model.pricing.{model}.{name}", "must be 0 or more")


def _check_federation(cfg: Config, file: str) -> None:
    """Every pinned key must parse, be of the right type and carry the right name."""
    from ccn_node.ledger.note import ALG_COSIGNATURE_V1, ALG_ED25519, NoteError, parse_vkey, valid_key_name

    fed = cfg.federation
    for key, value in (("federation.pull_interval_s", fed.pull_interval_s),
                       ("federation.request_timeout_s", fed.request_timeout_s),
                       ("federation.max_age_s", fed.max_age_s)):
        if value <= 0:
            raise ConfigError(file, key, f"must be greater than 0, got {value}")
    if fed.witnesses_required < 0:
        raise ConfigError(file, "federation.witnesses_required", "must be 0 or more")
    if fed.witness_name and not valid_key_name(fed.witness_name):
        raise ConfigError(file, "federation.witness_name", "a key name: no spaces, no '+'")
    seen: set[str] = set()
    for i, peer in enumerate(fed.peers):
        where = f"federation.peers[{i}]"
        if not valid_key_name(peer.origin):
            raise ConfigError(file, f"{where}.origin", "an origin: non-empty, no spaces, no '+'")
        if peer.origin == ledger_origin(cfg):
            raise ConfigError(file, f"{where}.origin", "is this node's own ledger origin")
        if peer.origin in seen:
            raise ConfigError(file, f"{where}.origin", f"{peer.origin!r} is pinned twice")
        seen.add(peer.origin)
        if peer.url and not re.fullmatch(r"https?://[^\s/]+(/[^\s]*)?", peer.url):
            raise ConfigError(file, f"{where}.url", "expected http(s)://HOST:PORT")
        if not peer.vkeys:
            raise ConfigError(file, f"{where}.vkeys", "needs at least one C2SP vkey")
        for kind, keys, alg in (("vkeys", peer.vkeys, ALG_ED25519), ("witness_vkeys", peer.witness_vkeys,
                                                                       ALG_COSIGNATURE_V1)):
            for j, text in enumerate(keys):
                try:
                    v = parse_vkey(text)
                except NoteError as exc:
                    raise ConfigError(file, f"{where}.{kind}[{j}]", str(exc)) from None
                if v.alg != alg:
                    raise ConfigError(file, f"{where}.{kind}[{j}]", f"expected a key of type 0x{alg:02x}")
                if kind == "vkeys" and v.name != peer.origin:
                    raise ConfigError(file, f"{where}.{kind}[{j}]", f"key name {v.name!r} is not the origin")


def _check_cluster(cl: ClusterConfig, file: str) -> None:
    """A member needs its own address, a secret and the org's ledger origin; refuse without."""
    if not cl.peers:
        return
    if not cl.address:
        raise ConfigError(file, "cluster.address", "required when cluster.peers is set (this node's raft HOST:PORT)")
    parse_listen(cl.address, file=file, key="cluster.address")
    for i, peer in enumerate(cl.peers):
        parse_listen(peer, file=file, key=f"cluster.peers[{i}]")
    if cl.bind_address:
        parse_listen(cl.bind_address, file=file, key="cluster.bind_address")
    if not cl.secret_file:
        raise ConfigError(file, "cluster.secret_file", "required when cluster.peers is set: pysyncobj unpickles what"
                          " it receives, so a raft port without a shared secret lets anyone run code on this node")
    if not cl.name:
        raise ConfigError(file, "cluster.name", "required when cluster.peers is set: the organisation's ledger"
                          " origin, identical on every node (checkpoints are signed inside apply)")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,99}", cl.name):
        raise ConfigError(file, "cluster.name", "letters, digits, '.', '_', '-', '/'; 1 to 100 characters")


def cluster_secret(cfg: Config) -> str:
    """The cluster secret (pysyncobj password) from cluster.secret_file; refuses a short one."""
    raw = read_secret_file(cfg.path(cfg.cluster.secret_file), file=cfg.source, key="cluster.secret_file").strip()
    if len(raw) < 16 or len(set(raw)) < 8:
        raise ConfigError(cfg.source, "cluster.secret_file", "the cluster secret must be at least 16 random bytes")
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise ConfigError(cfg.source, "cluster.secret_file", "the cluster secret must be text (e.g. base64)") from None


def ledger_origin(cfg: Config) -> str:
    """The ledger's origin name: the organisation's cluster.name in a cluster, else node.name."""
    return cfg.cluster.name if cfg.cluster.enabled else cfg.node.name


def config_from_dict(data: dict[str, Any], file: str = "<config>") -> Config:
    try:
        cfg = msgspec.convert(data, Config)
    except msgspec.ValidationError as exc:
        key, message = _key_of(str(exc))
        if message.startswith("Object contains unknown field"):
            field = message.split("`")[1] if "`" in message else "?"
            key = f"{key}.{field}" if key else field
            message = "unknown key"
        raise ConfigError(file, key, message) from None
    cfg.source = file
    _check(cfg, file)
    return cfg


def default_config_path() -> Path:
    return Path(os.environ.get(ENV_CONFIG) or "ccn.toml")


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read and validate a config file; raises ConfigError naming the file and key."""
    file = Path(path) if path is not None else default_config_path()
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        raise ConfigError(file, None, "file not found (run `ccn-node init --data-dir DIR` to create one)") from None
    except OSError as exc:
        raise ConfigError(file, None, f"cannot read: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(file, None, "not valid UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(file, None, f"not valid TOML: {exc}") from None
    return config_from_dict(data, str(file.resolve()))


def read_secret_file(path: Path, *, file: str, key: str) -> bytes:
    """Read a secret file, refusing one that group or others can read."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ConfigError(file, key, f"secret file {path} does not exist") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            file, key, f"secret file {path} is readable by group or others (mode {st.st_mode & 0o777:o}); chmod 600 it"
        )
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(file, key, f"cannot read secret file {path}: {exc.strerror}") from None


def write_secret_file(path: Path, data: bytes) -> None:
    """Create a file readable only by its owner (created 0600, never widened)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(path, 0o600)


MIN_JWT_KEY_BYTES = 32


def jwt_secret(cfg: Config) -> bytes:
    """The JWT signing key: $CCN_JWT_KEY or the key file. Refuses empty or short keys."""
    env = os.environ.get("CCN_JWT_KEY")
    if env is not None:
        key = env.encode()
        where = "environment CCN_JWT_KEY"
    else:
        key = read_secret_file(cfg.path(cfg.auth.jwt_key_file), file=cfg.source, key="auth.jwt_key_file").strip()
        where = "auth.jwt_key_file"
    _check_jwt_key(key, cfg.source, where)
    return key


def _check_jwt_key(key: bytes, file: str, where: str) -> None:
    """Refuse empty, short, placeholder or low-entropy keys: any of them makes every token forgeable."""
    if len(key) < MIN_JWT_KEY_BYTES or key in (b"secret", b"changeme", b"change-me") or len(set(key)) < 8:
        raise ConfigError(file, where, f"the JWT key must be at least {MIN_JWT_KEY_BYTES} random bytes")


def previous_jwt_secrets(cfg: Config) -> tuple[list[bytes], float]:
    """The rotated-out JWT keys and until when (unix time) they are accepted.

    The grace period runs from the rotation, taken as the modification time of the current key
    file (or now, when the key comes from $CCN_JWT_KEY), so a restart does not extend it.
    """
    keys = []
    for i, name in enumerate(cfg.auth.previous_key_files):
        where = f"auth.previous_key_files[{i}]"
        key = read_secret_file(cfg.path(name), file=cfg.source, key=where).strip()
        _check_jwt_key(key, cfg.source, where)
        keys.append(key)
    rotated_at = time.time()
    if os.environ.get("CCN_JWT_KEY") is None:
        with contextlib.suppress(OSError):
            rotated_at = cfg.path(cfg.auth.jwt_key_file).stat().st_mtime
    return keys, rotated_at + cfg.auth.previous_key_grace_s


def model_api_key(cfg: Config) -> str:
    """The model API key: the key file if configured, else $ANTHROPIC_API_KEY / $OPENAI_API_KEY."""
    if cfg.model.api_key_file:
        return (
            read_secret_file(cfg.path(cfg.model.api_key_file), file=cfg.source, key="model.api_key_file")
            .decode()
            .strip()
        )
    if cfg.model.backend == "openai":
        return os.environ.get("OPENAI_API_KEY", "")
    return os.environ.get("ANTHROPIC_API_KEY", "")
