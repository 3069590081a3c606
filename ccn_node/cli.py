"""The ccn-node command line: init, serve, token, chat, search, export, verify, bench, …

Every subcommand takes ``--config FILE`` (default ``./ccn.toml`` or ``$CCN_CONFIG``). Errors
the operator can fix are printed as one line naming the file and key, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from ccn_node.config import (
    DEFAULT_LISTEN,
    Config,
    ConfigError,
    default_config_path,
    jwt_secret,
    ledger_origin,
    load_config,
    parse_listen,
)
from ccn_node.datadir import init_cluster_member, init_data_dir, ledger_verifiers, vkeys

EXIT_USAGE = 2
EXIT_CONFIG = 78  # EX_CONFIG: systemd does not restart-loop on it with RestartPreventExitStatus


def _print_err(message: str) -> None:
    print(f"ccn-node: {message}", file=sys.stderr)


def cmd_init(args: argparse.Namespace) -> int:
    if args.peer and not (args.raft_address and args.cluster_secret_file):
        _print_err("--peer needs --raft-address and --cluster-secret-file")
        return EXIT_USAGE
    config_path = init_data_dir(Path(args.data_dir), listen=args.listen, name=args.name, force=args.force)
    if args.peer:
        init_cluster_member(
            Path(args.data_dir), raft_address=args.raft_address, peers=args.peer,
            secret_file=Path(args.cluster_secret_file),
            jwt_key_file=Path(args.jwt_key_file) if args.jwt_key_file else None,
            ledger_key_file=Path(args.ledger_key_file) if args.ledger_key_file else None,
            cluster_name=args.cluster_name, durability=args.durability,
        )
    cfg = load_config(config_path)
    if cfg.cluster.enabled:
        print(f"cluster:     {cfg.cluster.name}, raft {cfg.cluster.address}, members {', '.join(cfg.cluster.peers)}")
    token = _issue_token(cfg, "admin", "admin")
    print(f"config:      {config_path}")
    print(f"data dir:    {cfg.data_dir}")
    print(f"listen:      http://{cfg.node.listen}")
    print(f"admin token: {token}")
    log_vkey, witness_vkey = vkeys(cfg)
    print(f"ledger vkey: {log_vkey}")
    print(f"witness vkey: {witness_vkey}")
    print(f"start with:  ccn-node serve --config {config_path}")
    return 0


# -- verify ----------------------------------------------------------------------------


def cmd_verify(args: argparse.Namespace) -> int:
    """Read-only full audit: works on a stopped node or beside a running one (WAL readers)."""
    from ccn_node.replication.audit import verify_database

    cfg = load_config(args.config)
    if not cfg.database_path.exists():
        raise ConfigError(cfg.source, "storage.database", f"{cfg.database_path} does not exist")
    report = verify_database(cfg.database_path, ledger_verifiers(cfg), origin=ledger_origin(cfg),
                             parallel=not args.serial)
    if args.json:
        problem = report.problem
        print(json.dumps({"ok": report.ok, "summary": report.summary(), "leaves": report.ledger.leaves,
                          "blocks": report.ledger.blocks, "corpus_rows": report.corpus_rows,
                          "seconds": report.seconds,
                          "problem": None if problem is None else {"table": problem.table, "row": problem.row,
                                                                   "message": problem.message}}))
    else:
        print(report.summary())
    return 0 if report.ok else 1


# -- serve -----------------------------------------------------------------------------


def _setup_logging(level: str) -> None:
    from ccn_node.monitoring import setup_json_logging

    setup_json_logging(level, sys.stderr)


def cmd_serve(args: argparse.Namespace) -> int:
    from ccn_node.node import Node, run_until_signalled

    config_path = Path(args.config) if args.config else default_config_path()
    first_token = None
    if args.data_dir:
        config_path = Path(args.data_dir).expanduser().resolve() / "ccn.toml"
        if not config_path.exists():
            init_data_dir(config_path.parent, listen=args.listen or DEFAULT_LISTEN)
            first_token = True
    cfg = load_config(config_path)
    _setup_logging(cfg.node.log_level)
    node = Node(cfg, listen=args.listen)
    print(f"ccn-node {cfg.node.name} at http://{node.host}:{node.port} (config {cfg.source})", flush=True)
    if first_token:
        print(f"admin token: {_issue_token(cfg, 'admin', 'admin')}", flush=True)
    asyncio.run(run_until_signalled(node))
    return 0


# -- token -----------------------------------------------------------------------------


def _issue_token(cfg: Config, user: str, role: str, ttl: int | None = None) -> str:
    from ccn_node.api.auth import TokenAuthority

    authority = TokenAuthority(jwt_secret(cfg), issuer=cfg.auth.issuer, ttl_s=cfg.auth.token_ttl_s)
    return authority.issue(user, role, ttl)


def cmd_token(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    try:
        print(_issue_token(cfg, args.user, args.role, args.ttl))
    except ValueError as exc:
        _print_err(str(exc))
        return EXIT_USAGE
    return 0


# -- search and export (read the database directly; work with the node stopped) -------


def _reader(cfg: Config) -> Any:
    from ccn_node.store.database import open_connection

    if not cfg.database_path.exists():
        raise ConfigError(cfg.source, "storage.database", f"{cfg.database_path} does not exist yet (start the node)")
    return open_connection(cfg.database_path, readonly=True)


def cmd_search(args: argparse.Namespace) -> int:
    from ccn_node.continuity.retrieval import search
    from ccn_node.replication.search_index import unindexed_count

    cfg = load_config(args.config)
    conn = _reader(cfg)
    import msgspec

    hits = msgspec.to_builtins(search(conn, args.user, args.query, args.limit, 0))
    waiting = unindexed_count(conn)
    if waiting:
        _print_err(f"note: the {waiting} message(s) written last are not in the search index yet; the node"
                   " indexes them when it runs (search through its API always includes them)")
    if args.json:
        print(json.dumps(hits, indent=2))
        return 0
    for hit in hits:
        print(f"{hit['created_at']}  {hit['session_id']} #{hit['seq']} {hit['role']}: {hit['snippet']}")
    if not hits:
        print("no matches", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ccn_node.api.routes_conversation import conversation_markdown
    from ccn_node.store import queries

    cfg = load_config(args.config)
    conn = _reader(cfg)
    conv = queries.get_conversation(conn, args.user, args.session_id)
    if conv is None:
        _print_err(f"no conversation {args.session_id} of user {args.user}")
        return 1
    conv["messages"] = queries.list_messages(conn, args.user, args.session_id)
    text = conversation_markdown(conv) if args.format == "markdown" else json.dumps(conv, indent=2) + "\n"
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


# -- chat ------------------------------------------------------------------------------


def cmd_chat(args: argparse.Namespace) -> int:
    from ccn_node.chat_client import run_chat

    url = args.url
    token = args.token or os.environ.get("CCN_TOKEN")
    if url is None or token is None:
        cfg = load_config(args.config)
        url = url or f"http://{cfg.node.listen}"
        token = token or _issue_token(cfg, args.user, "user")
    return asyncio.run(run_chat(url, token, session_id=args.session, title=args.title))


# -- backup, restore, user (store/backup.py, replication/recovery.py) -----------------


def cmd_backup(args: argparse.Namespace) -> int:
    """Works while the node runs: it only reads the database (its own read transaction)."""
    from dataclasses import asdict

    from ccn_node.store.backup import BackupError, backup_key, create_backup

    cfg = load_config(args.config)
    try:
        info = create_backup(
            cfg.database_path, cfg.path(cfg.backup.dir), key=backup_key(cfg, args.key_file), keep=cfg.backup.keep,
            verifiers=ledger_verifiers(cfg), node_name=cfg.node.name,
            output=Path(args.output).resolve() if args.output else None,
            step_pages=cfg.backup.step_pages, pause_s=cfg.backup.step_pause_ms / 1000,
        )
    except BackupError as exc:
        _print_err(f"backup failed: {exc}")
        return 1
    if args.json:
        print(json.dumps(asdict(info), indent=2))
    else:
        print(f"{info.file}: index {info.applied_index}, ledger size {info.ledger_size}, {info.bytes} bytes,"
              f" {'encrypted' if info.encrypted else 'not encrypted'}; {info.audit}")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    """Into a stopped node only: the node's lock file and its listen port are both checked."""
    from ccn_node.replication.recovery import Target, point_in_time
    from ccn_node.store.backup import (
        BackupError,
        DatabaseLock,
        backup_key,
        install_database,
        list_backups,
        listener_running,
        open_candidate,
    )

    cfg = load_config(args.config)
    db = cfg.database_path
    lock = DatabaseLock(db)
    try:
        lock.acquire()
    except BackupError as exc:
        _print_err(f"restore refused: {exc}")
        return 1
    try:
        host, port = parse_listen(cfg.node.listen, file=cfg.source, key="node.listen")
        if listener_running(host, port):
            _print_err(f"restore refused: something is listening on {cfg.node.listen}; stop the node first")
            return 1
        key = backup_key(cfg, args.key_file)
        verifiers = ledger_verifiers(cfg)
        source = Path(args.file).resolve()
        if args.at_size is None and args.at_time is None:
            candidate, check = open_candidate(source, db.parent, key=key, verifiers=verifiers)
            what = f"index {check.applied_index}, ledger size {check.ledger_size}" if check else ""
        else:
            target = Target(size=args.at_size, at=args.at_time)
            plain, _ = open_candidate(source, db.parent, key=key, verifiers=verifiers)
            try:
                candidate, report = point_in_time(plain, target, db.parent, bases=list_backups(
                    cfg.path(cfg.backup.dir)), key=key, verifiers=verifiers)
            finally:
                plain.unlink(missing_ok=True)
            what = (f"{report.target}: log index {report.log_index}, ledger size {report.ledger_size},"
                    f" from {report.base} + {report.replayed} journal entries")
        kept = install_database(candidate, db)
    except BackupError as exc:
        _print_err(f"restore refused: {exc}")
        return 1
    finally:
        lock.release()
    print(f"restored {db} ({what})" + (f"; the previous database is kept as {kept}" if kept else ""))
    return 0


def _admin_call(cfg: Config, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    import http.client

    host, port = parse_listen(cfg.node.listen, file=cfg.source, key="node.listen")
    conn = http.client.HTTPConnection(host, port, timeout=600)
    headers = {"Authorization": f"Bearer {_issue_token(cfg, 'admin', 'admin', 300)}"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    except OSError as exc:
        raise ConfigError(cfg.source, "node.listen", f"cannot reach the node at {cfg.node.listen}: {exc}") from None
    finally:
        conn.close()


def cmd_user(args: argparse.Namespace) -> int:
    """Erasure and retention are commands: they go through the running node (and its log)."""
    from urllib.parse import quote

    cfg = load_config(args.config)
    name = quote(args.name, safe="")
    if args.user_command == "retention":
        if args.days != "default" and not args.days.isdigit():
            _print_err("DAYS must be a whole number of days or 'default'")
            return EXIT_USAGE
        days = None if args.days == "default" else int(args.days)
        status, body = _admin_call(cfg, "PUT", f"/api/v1/users/{name}/retention", {"days": days})
    else:
        purge = "true" if args.purge_backups else "false"
        status, body = _admin_call(cfg, "DELETE", f"/api/v1/users/{name}/data?purge_backups={purge}")
    print(json.dumps(body, indent=2))
    return 0 if status == 200 else 1


# -- cluster ---------------------------------------------------------------------------


def cmd_cluster(args: argparse.Namespace) -> int:
    """Through the running node's API; membership changes one at a time, each waited for."""
    cfg = load_config(args.config)
    if args.cluster_command == "status":
        status, body = _admin_call(cfg, "GET", "/api/v1/cluster")
        print(json.dumps(body, indent=2))
        return 0 if status == 200 else 1
    for address in args.addresses:
        status, body = _admin_call(cfg, "POST", "/api/v1/cluster/members",
                                   {"action": args.cluster_command, "address": address})
        if status != 200:
            _print_err(f"{args.cluster_command} {address} failed ({status}): {json.dumps(body)}")
            return 1
        print(f"{args.cluster_command} {address}: committed (term {body['status']['term']})")
    print("set cluster.peers to the new member list in every member's ccn.toml (it is read at start)")
    return 0


# -- bench -----------------------------------------------------------------------------


def cmd_bench(args: argparse.Namespace) -> int:
    from ccn_node.benchmarks import node as bench

    result = bench.run(args)
    print(json.dumps(result, indent=2) if args.json else bench.render(result))
    return 0


# -- parser ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ccn-node", description="Consciousness Continuity Node")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_)
        p.add_argument("--config", default=None, help="config file (default ./ccn.toml or $CCN_CONFIG)")
        return p

    p = add("init", "create a data directory: config, keys, THE PLATE; print an admin token")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--listen", default=DEFAULT_LISTEN, help="HOST:PORT of the API")
    p.add_argument("--name", default=None, help="node name (ledger origin); default random")
    p.add_argument("--force", action="store_true", help="overwrite an existing ccn.toml (keys are kept)")
    p.add_argument("--raft-address", default=None, help="cluster: this node's raft HOST:PORT")
    p.add_argument("--peer", action="append", default=[], help="cluster: a member's raft HOST:PORT (repeat)")
    p.add_argument("--cluster-secret-file", default=None,
                   help="cluster: the shared secret; copied into keys/, created first if FILE does not exist")
    p.add_argument("--jwt-key-file", default=None,
                   help="cluster: the shared JWT key (tokens valid on every node); copied in, or created")
    p.add_argument("--ledger-key-file", default=None,
                   help="cluster: the organisation's ledger key; copied in, or created")
    p.add_argument("--cluster-name", default=None,
                   help="cluster: the ledger origin (default derived from the ledger key)")
    p.add_argument("--durability", choices=["fast", "fsync"], default="fsync", help="cluster: raft journal fsync")
    p.set_defaults(func=cmd_init)

    p = add("serve", "run the node")
    p.add_argument("--listen", default=None, help="HOST:PORT, overrides node.listen")
    p.add_argument("--data-dir", default=None, help="use DIR/ccn.toml, creating it on first run")
    p.set_defaults(func=cmd_serve)

    p = add("token", "print a JWT for a user")
    p.add_argument("--user", required=True)
    p.add_argument("--role", choices=["user", "admin"], default="user")
    p.add_argument("--ttl", type=int, default=None, help="lifetime in seconds")
    p.set_defaults(func=cmd_token)

    p = add("chat", "talk to a node from the terminal (streams the answer)")
    p.add_argument("--url", default=None)
    p.add_argument("--token", default=None, help="JWT (default: $CCN_TOKEN, or minted from the config's key)")
    p.add_argument("--user", default=os.environ.get("USER", "user"))
    p.add_argument("--session", default=None, help="resume a conversation by id")
    p.add_argument("--title", default="")
    p.set_defaults(func=cmd_chat)

    p = add("search", "full-text search in one user's conversations")
    p.add_argument("query")
    p.add_argument("--user", required=True)
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_search)

    p = add("export", "export a conversation as JSON or Markdown")
    p.add_argument("session_id")
    p.add_argument("--user", required=True)
    p.add_argument("--format", choices=["json", "markdown"], default="json")
    p.add_argument("--output", default=None)
    p.set_defaults(func=cmd_export)

    p = add("verify", "full local audit: corpus rows vs ledger leaves, tree, blocks, signatures (read-only)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--serial", action="store_true", help="one process (default: the corpus check runs beside)")
    p.set_defaults(func=cmd_verify)

    p = add("backup", "write a verified online backup now (works while the node runs)")
    p.add_argument("--output", default=None, help="write this one file instead of DATA/backups (no rotation)")
    p.add_argument("--key-file", default=None, help="encrypt with this key file (default backup.key_file)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_backup)

    p = add("restore", "replace a stopped node's database by a verified backup, or its state at a point in time")
    p.add_argument("file", help="backup file (encrypted or not), or a database holding the command journal")
    at = p.add_mutually_exclusive_group()
    at.add_argument("--at-size", type=int, default=None, help="the state when the ledger had N entries")
    at.add_argument("--at-time", default=None, help="the state at an ISO 8601 time")
    p.add_argument("--key-file", default=None, help="key for encrypted backups (default backup.key_file)")
    p.set_defaults(func=cmd_restore)

    p = add("user", "a user's data: retention period, erasure (through the running node)")
    user_sub = p.add_subparsers(dest="user_command", required=True)
    q = user_sub.add_parser("retention", help="set how long NAME's message content is kept")
    q.add_argument("name")
    q.add_argument("days", help="days, or 'default'")
    q = user_sub.add_parser("erase", help="erase all of NAME's message content now")
    q.add_argument("name")
    q.add_argument("--purge-backups", action="store_true", help="also rewrite the backups without it")
    for q in user_sub.choices.values():
        q.add_argument("--config", default=argparse.SUPPRESS)
    p.set_defaults(func=cmd_user)

    p = add("cluster", "cluster status and membership (through the running node's API, admin token)")
    cluster_sub = p.add_subparsers(dest="cluster_command", required=True)
    cluster_sub.add_parser("status", help="role, term, leader, indexes, peers and their lag")
    q = cluster_sub.add_parser("add", help="add members, one change at a time")
    q.add_argument("addresses", nargs="+", metavar="HOST:PORT")
    q = cluster_sub.add_parser("remove", help="remove members, one change at a time")
    q.add_argument("addresses", nargs="+", metavar="HOST:PORT")
    for q in cluster_sub.choices.values():
        q.add_argument("--config", default=argparse.SUPPRESS)
    p.set_defaults(func=cmd_cluster)

    p = add("bench", "run a benchmark and print its figures")
    p.add_argument("what", choices=["retrieval", "context", "turn", "startup", "ledger", "continuity", "cluster",
                                    "ops"])
    p.add_argument("--locomo", default=None, help="LoCoMo-format JSON file (bench retrieval)")
    p.add_argument("--budget", type=int, default=2000)
    p.add_argument("--sizes", default="10000,100000", help="corpus sizes for bench context (comma separated)")
    p.add_argument("--samples", type=int, default=300)
    p.add_argument("--data-dir", default=None, help="bench context: keep generated corpora here and reuse them")
    p.add_argument("--messages", type=int, default=100_000, help="bench ops: corpus size for the online backup")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        _print_err(str(exc))
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from ccn_node.node import StartupError

        if isinstance(exc, StartupError):
            _print_err(str(exc))
            return EXIT_CONFIG
        raise
