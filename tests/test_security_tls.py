"""TLS for the API with a self-signed certificate made by `cryptography`; SIGHUP swaps in a new
certificate without closing the listener (an open keep-alive connection keeps working), and a
bad pair on reload keeps the old one serving."""

from __future__ import annotations

import datetime
import hashlib
import http.client
import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from nodeproc import NodeProcess

pytestmark = pytest.mark.slow


def make_cert(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (P-256, one day)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    return cert_path, key_path


def fingerprint(conn: http.client.HTTPSConnection) -> str:
    der = conn.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
    return hashlib.sha256(der).hexdigest()


class TlsNode(NodeProcess):
    def client_context(self, *cafiles: Path) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        for cafile in cafiles:
            ctx.load_verify_locations(cafile)
        return ctx

    def https(self, ctx: ssl.SSLContext) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection("127.0.0.1", self.port, context=ctx, timeout=10)

    def wait_ready(self, ctx: ssl.SSLContext, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.log_path.read_text()[-2000:]
            try:
                conn = self.https(ctx)
                conn.request("GET", "/ready")
                if conn.getresponse().status == 200:
                    conn.close()
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("TLS node not ready")

    def request_plain_fails(self) -> bool:
        """Plain HTTP on the TLS port gets no successful HTTP answer."""
        try:
            return self.request("GET", "/health", timeout=5).status == 400
        except (OSError, http.client.HTTPException):
            return True

    def launch(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "ccn_node", "serve", "--config", str(self.config_path)],
                                     stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)


def test_tls_serves_and_reloads_on_sighup(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    cert_a, key_a = make_cert(certs, "a")
    cert_b, key_b = make_cert(certs, "b")
    live_cert, live_key = tmp_path / "data" / "tls.crt", tmp_path / "data" / "tls.key"
    node = TlsNode(tmp_path / "data", config_extra='[tls]\ncert_file = "tls.crt"\nkey_file = "tls.key"\n')
    live_cert.write_bytes(cert_a.read_bytes())
    live_key.write_bytes(key_a.read_bytes())
    live_key.chmod(0o600)
    ctx = node.client_context(cert_a, cert_b)
    node.launch()
    try:
        node.wait_ready(ctx)
        assert node.request_plain_fails()
        kept = node.https(ctx)
        kept.request("GET", "/health")
        assert kept.getresponse().read() and fingerprint(kept) == _fp(cert_a)

        # renewal: new pair on disk, SIGHUP, same listener
        live_cert.write_bytes(cert_b.read_bytes())
        live_key.write_bytes(key_b.read_bytes())
        node.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        deadline = time.monotonic() + 10
        seen = None
        while time.monotonic() < deadline:
            fresh = node.https(ctx)
            fresh.request("GET", "/health")
            assert fresh.getresponse().status == 200
            seen = fingerprint(fresh)
            fresh.close()
            if seen == _fp(cert_b):
                break
            time.sleep(0.1)
        assert seen == _fp(cert_b)
        kept.request("GET", "/health")  # the connection opened before the reload still works
        assert kept.getresponse().status == 200 and fingerprint(kept) == _fp(cert_a)
        kept.close()

        # a broken reload (key of another certificate) keeps serving the last good pair
        live_key.write_bytes(key_a.read_bytes())
        node.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        time.sleep(0.5)
        fresh = node.https(ctx)
        fresh.request("GET", "/ready")
        assert fresh.getresponse().status == 200 and fingerprint(fresh) == _fp(cert_b)
        fresh.close()
        assert "TLS certificate not reloaded" in node.log_path.read_text()
        assert node.proc.poll() is None  # type: ignore[union-attr]
    finally:
        assert node.stop() == 0


def _fp(cert: Path) -> str:
    der = x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def test_tls_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path, "c")
    node = NodeProcess(tmp_path / "data", config_extra=f'[tls]\ncert_file = "{cert}"\nkey_file = "{key}"\n')
    key.chmod(0o644)
    out = subprocess.run([sys.executable, "-m", "ccn_node", "serve", "--config", str(node.config_path)],
                         capture_output=True, text=True, env=node.env, timeout=60)
    assert out.returncode == 78, out
    assert "tls.key_file" in out.stderr and "chmod 600" in out.stderr


def test_tls_needs_both_files(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "data", config_extra='[tls]\ncert_file = "x.crt"\n')
    out = subprocess.run([sys.executable, "-m", "ccn_node", "serve", "--config", str(node.config_path)],
                         capture_output=True, text=True, env=node.env, timeout=60)
    assert out.returncode == 78 and "tls.key_file" in out.stderr, out
