"""The data directory of a node: its ccn.toml, its keys and THE PLATE, as `ccn-node init`
creates them, and the public keys derived from them that peers pin.

Kept apart from the CLI so that tests, benchmarks and the CLI share one way to make a node.
"""

from __future__ import annotations

import base64
import secrets
from importlib import resources
from pathlib import Path
from typing import Any

from ccn_node.config import Config, ConfigError, ledger_origin, parse_listen, read_secret_file, write_secret_file


def config_text(*, name: str, listen: str) -> str:
    return f"""# ccn-node configuration; every key and its default is documented in ccn.toml.example.
# Paths are relative to this file's directory. Secrets live in files under keys/, never here.

[node]
name = "{name}"
data_dir = "."
listen = "{listen}"

[storage]
database = "ccn.sqlite3"
synchronous = "full"

[plate]
path = "plate.md"

[model]
# "auto": Anthropic when ANTHROPIC_API_KEY is set (or api_key_file below), else the offline backend.
backend = "auto"
model = "claude-sonnet-4-6"
max_tokens = 1024
# api_key_file = "keys/anthropic.key"

[auth]
jwt_key_file = "keys/jwt.key"

[ledger]
key_file = "keys/node.ed25519"
"""


def cluster_config_text(*, name: str, address: str, peers: list[str], durability: str = "fsync") -> str:
    """The [cluster] section of a member (replication/DESIGN.md "Raft"; keys in ccn.toml.example)."""
    peer_list = ", ".join(f'"{p}"' for p in peers)
    return f"""
[cluster]
# The organisation's ledger origin and the member list: identical on every node.
name = "{name}"
address = "{address}"
peers = [{peer_list}]
secret_file = "keys/cluster.secret"
durability = "{durability}"
"""


def _share_secret(shared: Path | None, dest: Path, make: Any) -> None:
    """A cluster-wide secret: copy ``shared`` into ``dest``; if ``shared`` does not exist yet,
    create it from ``dest`` (or from ``make()``), so the same init line works on every node."""
    if shared is not None:
        shared = shared.expanduser().resolve()
        if shared.exists():
            write_secret_file(dest, read_secret_file(shared, file=str(shared), key="shared key file"))
            return
    if not dest.exists():
        write_secret_file(dest, make())
    if shared is not None:
        write_secret_file(shared, dest.read_bytes())


def _new_ed25519_pem() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _default_cluster_name(ledger_pem: bytes) -> str:
    """Derived from the shared ledger key, so every member computes the same origin."""
    import hashlib

    from cryptography.hazmat.primitives import serialization

    public = serialization.load_pem_private_key(ledger_pem, password=None).public_key()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"ccn-org-{hashlib.sha256(raw).hexdigest()[:8]}"


def init_cluster_member(
    data_dir: Path,
    *,
    raft_address: str,
    peers: list[str],
    secret_file: Path,
    jwt_key_file: Path | None = None,
    ledger_key_file: Path | None = None,
    cluster_name: str | None = None,
    durability: str = "fsync",
) -> None:
    """Make an initialised data dir a cluster member: shared keys in keys/, a [cluster] section."""
    data_dir = data_dir.expanduser().resolve()
    parse_listen(raft_address, file="--raft-address", key="raft-address")
    for peer in peers:
        parse_listen(peer, file="--peer", key="peer")
    keys = data_dir / "keys"
    _share_secret(secret_file, keys / "cluster.secret",
                  lambda: base64.urlsafe_b64encode(secrets.token_bytes(32)) + b"\n")
    _share_secret(jwt_key_file, keys / "jwt.key", lambda: base64.urlsafe_b64encode(secrets.token_bytes(32)) + b"\n")
    _share_secret(ledger_key_file, keys / "node.ed25519", _new_ed25519_pem)
    name = cluster_name or _default_cluster_name((keys / "node.ed25519").read_bytes())
    members = sorted(set(peers) | {raft_address})
    config_path = data_dir / "ccn.toml"
    text = config_path.read_text()
    if durability == "fsync":  # the fsynced Raft journal is the durable record (replication/DESIGN.md)
        text = text.replace('synchronous = "full"', 'synchronous = "normal"', 1)
    config_path.write_text(text + cluster_config_text(
        name=name, address=raft_address, peers=members, durability=durability))


def init_data_dir(data_dir: Path, *, listen: str, name: str | None = None, force: bool = False) -> Path:
    """Write DIR/ccn.toml, the node's Ed25519 key, a JWT key and THE PLATE; return the config path."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    data_dir = data_dir.expanduser().resolve()
    config_path = data_dir / "ccn.toml"
    if config_path.exists() and not force:
        raise ConfigError(config_path, None, "exists already (use --force to overwrite the config; keys are kept)")
    parse_listen(listen, file="--listen", key="listen")
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
    node_name = name or f"ccn-{secrets.token_hex(3)}"
    config_path.write_text(config_text(name=node_name, listen=listen))
    keys = data_dir / "keys"
    if not (keys / "jwt.key").exists():
        write_secret_file(keys / "jwt.key", base64.urlsafe_b64encode(secrets.token_bytes(32)) + b"\n")
    for key_name in ("node.ed25519", "witness.ed25519"):  # ledger key (the organisation's), cosigning key (this node's)
        if not (keys / key_name).exists():
            pem = Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            write_secret_file(keys / key_name, pem)
    plate = data_dir / "plate.md"
    if not plate.exists():
        plate.write_bytes(resources.files("ccn_node").joinpath("data/plate.example.md").read_bytes())
    return config_path


def ledger_verifiers(cfg: Config) -> list[Any]:
    from ccn_node.ledger.ledger import load_signer

    pem = read_secret_file(cfg.path(cfg.ledger.key_file), file=cfg.source, key="ledger.key_file")
    try:
        return [load_signer(ledger_origin(cfg), pem).verifier()]
    except ValueError as exc:
        raise ConfigError(cfg.source, "ledger.key_file", str(exc)) from None


def vkeys(cfg: Config) -> tuple[str, str]:
    """The C2SP verifier keys peers pin: the ledger's (vkeys) and this node's witness key (witness_vkeys)."""
    from cryptography.hazmat.primitives import serialization

    from ccn_node.ledger.note import CosignatureSigner

    log_vkey = ledger_verifiers(cfg)[0].vkey()
    key_file = cfg.path(cfg.federation.witness_key_file)
    pem = read_secret_file(key_file, file=cfg.source, key="federation.witness_key_file")
    key = serialization.load_pem_private_key(pem, password=None)
    name = cfg.federation.witness_name or f"{cfg.node.name}/witness"
    return log_vkey, CosignatureSigner(name, key).vkey()  # type: ignore[arg-type]
