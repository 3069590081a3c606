"""HTTPS for the API: one SSLContext built from the ``[tls]`` files, reloaded in place on SIGHUP.

Why in place: a reload calls ``load_cert_chain`` on the very context the listening socket
uses, so the listener is never closed and no connection is dropped — connections already
open keep their session, the next handshake gets the new certificate (what certbot or an
ACME client needs after a renewal). A reload that fails (file missing, key not matching the
certificate, key readable by others) keeps the old certificate and raises ``ConfigError``
naming the key, which the node logs.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from ccn_node.config import Config, ConfigError, read_secret_file


def _load(context: ssl.SSLContext, cfg: Config) -> None:
    cert = cfg.path(cfg.tls.cert_file)
    key = cfg.path(cfg.tls.key_file)
    if not Path(cert).is_file():
        raise ConfigError(cfg.source, "tls.cert_file", f"certificate file {cert} does not exist")
    read_secret_file(key, file=cfg.source, key="tls.key_file")  # refuses a key others can read
    try:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except ssl.SSLError as exc:
        raise ConfigError(cfg.source, "tls.key_file", f"cannot use {cert} with {key}: {exc.reason or exc}") from None
    except OSError as exc:
        raise ConfigError(cfg.source, "tls.cert_file", f"cannot read {cert}: {exc.strerror}") from None


def server_context(cfg: Config) -> ssl.SSLContext | None:
    """The server context for the configured files, or None when TLS is off (plain HTTP)."""
    if not cfg.tls.cert_file:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load(context, cfg)
    return context


def reload(context: ssl.SSLContext, cfg: Config) -> None:
    """Load the (renewed) certificate and key into the live context; on error the old pair stays.

    The pair is tried on a scratch context first: OpenSSL replaces the certificate before it
    checks the key, so a failed load straight into the live context would leave it half-changed.
    """
    _load(ssl.create_default_context(ssl.Purpose.CLIENT_AUTH), cfg)
    _load(context, cfg)
