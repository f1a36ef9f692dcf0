"""Tests for the tls package: real certificates, real TLS handshakes on loopback sockets.

Certificates come from the local CA (the ``cryptography`` fallback) and, where the binary
is installed, from mkcert with its CA root in a temporary ``$CAROOT``. Without mkcert
those tests skip with the reason, except under ``CI=true``, where they fail: CI installs
Debian's ``mkcert`` package, so a missing binary there is a broken setup.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import tls
from tls.mkcert import CA_FILE, CERT_FILE, KEY_FILE, MKCERT_ENV

TIMEOUT = 5.0
"""Seconds any socket operation or thread join may take before the test fails."""

REPO_ROOT = Path(__file__).resolve().parents[1]


# --- helpers ----------------------------------------------------------------------------


@dataclass
class ServerSide:
    """What the server thread saw: the negotiated parameters, or why the handshake failed."""

    alpn: str | None = None
    version: str | None = None
    error: OSError | None = None


@contextmanager
def serve_once(
    context: ssl.SSLContext, host: str = "127.0.0.1"
) -> Iterator[tuple[tuple[str, int], ServerSide]]:
    """Accept one TLS connection on ``host`` in a thread and echo one message back."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.settimeout(TIMEOUT)
    listener.bind((host, 0))
    listener.listen(1)
    result = ServerSide()

    def serve() -> None:
        try:
            connection, _ = listener.accept()
            connection.settimeout(TIMEOUT)
            with context.wrap_socket(connection, server_side=True) as tls_connection:
                result.alpn = tls_connection.selected_alpn_protocol()
                result.version = tls_connection.version()
                tls_connection.sendall(tls_connection.recv(1024))
        except OSError as error:  # ssl.SSLError is an OSError
            result.error = error

    thread = threading.Thread(target=serve, name="tls-test-server", daemon=True)
    thread.start()
    try:
        address = listener.getsockname()
        yield (address[0], address[1]), result
    finally:
        thread.join(TIMEOUT)
        listener.close()
        assert not thread.is_alive(), "the TLS server thread did not finish"


def connect(
    context: ssl.SSLContext, address: tuple[str, int], server_hostname: str
) -> tuple[str | None, str | None]:
    """Handshake, send one message, check the echo; return (ALPN, TLS version)."""
    with (
        socket.create_connection(address, timeout=TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname=server_hostname) as tls_connection,
    ):
        tls_connection.sendall(b"hello over TLS")
        assert tls_connection.recv(1024) == b"hello over TLS"
        return tls_connection.selected_alpn_protocol(), tls_connection.version()


def refused(
    client: ssl.SSLContext, server: ssl.SSLContext, server_hostname: str = "localhost"
) -> tuple[ssl.SSLError, OSError | None]:
    """Attempt a handshake that must fail; return the client's error and the server's."""
    with (
        serve_once(server) as (address, server_side),
        pytest.raises(ssl.SSLError) as client_error,
    ):
        connect(client, address, server_hostname)
    return client_error.value, server_side.error


def ipv6_loopback_available() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def san_names(certfile: Path) -> set[str]:
    certificate = x509.load_pem_x509_certificate(certfile.read_bytes())
    alt_names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    dns = alt_names.value.get_values_for_type(x509.DNSName)
    addresses = alt_names.value.get_values_for_type(x509.IPAddress)
    return set(dns) | {str(address) for address in addresses}


def not_after(certfile: Path) -> datetime:
    return x509.load_pem_x509_certificate(certfile.read_bytes()).not_valid_after_utc


def run_cli(*arguments: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = dict(os.environ if env is None else env)
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO_ROOT), environment.get("PYTHONPATH")])
    )
    return subprocess.run(
        [sys.executable, "-m", "tls", *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
        check=False,
    )


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_files(tmp_path_factory: pytest.TempPathFactory) -> tls.CertificateFiles:
    """A certificate for the default hosts from the local CA, shared by handshake tests."""
    return tls.ensure_certificates(tmp_path_factory.mktemp("local-ca"), prefer_mkcert=False)


@pytest.fixture
def server(local_files: tls.CertificateFiles) -> ssl.SSLContext:
    return tls.server_context(local_files.certfile, local_files.keyfile)


@pytest.fixture
def client(local_files: tls.CertificateFiles) -> ssl.SSLContext:
    return tls.client_context(local_files.cafile)


@pytest.fixture
def without_mkcert(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A PATH on which mkcert cannot be found, and no $MKCERT."""
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv(MKCERT_ENV, raising=False)


@pytest.fixture
def mkcert_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The mkcert binary, with its CA in a temporary $CAROOT so no real CA is touched."""
    binary = tls.find_mkcert()
    if binary is None:
        reason = "mkcert is not installed (Debian: apt-get install mkcert)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI must test the mkcert path")
        pytest.skip(f"{reason}: the mkcert code path is NOT tested")
    monkeypatch.setenv("CAROOT", str(tmp_path / "caroot"))
    return binary


# --- contexts ---------------------------------------------------------------------------


def test_server_context_settings(server: ssl.SSLContext) -> None:
    assert server.minimum_version == ssl.TLSVersion.TLSv1_2
    assert server.options & ssl.OP_NO_COMPRESSION
    assert server.options & ssl.OP_NO_RENEGOTIATION
    assert server.options & ssl.OP_NO_TICKET
    assert server.verify_mode == ssl.CERT_NONE


def test_client_context_settings(client: ssl.SSLContext) -> None:
    assert client.minimum_version == ssl.TLSVersion.TLSv1_2
    assert client.verify_mode == ssl.CERT_REQUIRED
    assert client.check_hostname
    assert client.verify_flags & ssl.VERIFY_X509_STRICT


@pytest.mark.parametrize("server_hostname", ["localhost", "127.0.0.1"])
def test_handshake_verifies_name_and_negotiates_alpn(
    server: ssl.SSLContext, client: ssl.SSLContext, server_hostname: str
) -> None:
    with serve_once(server) as (address, server_side):
        alpn, version = connect(client, address, server_hostname)
    assert server_side.error is None
    assert alpn == server_side.alpn == "http/1.1"
    assert version == server_side.version
    assert version in {"TLSv1.2", "TLSv1.3"}


def test_handshake_over_ipv6_loopback(server: ssl.SSLContext, client: ssl.SSLContext) -> None:
    if not ipv6_loopback_available():
        pytest.skip("this machine has no IPv6 loopback (::1 cannot be bound)")
    with serve_once(server, host="::1") as (address, server_side):
        alpn, _ = connect(client, address, "::1")
    assert server_side.error is None
    assert alpn == "http/1.1"


def test_client_without_http11_gets_no_alpn_answer(
    server: ssl.SSLContext, client: ssl.SSLContext
) -> None:
    client.set_alpn_protocols(["h2"])
    with serve_once(server) as (address, server_side):
        alpn, _ = connect(client, address, "localhost")
    assert server_side.error is None
    assert alpn is None


def test_tls12_client_is_accepted(server: ssl.SSLContext, client: ssl.SSLContext) -> None:
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    with serve_once(server) as (address, server_side):
        alpn, version = connect(client, address, "localhost")
    assert server_side.error is None
    assert (alpn, version) == ("http/1.1", "TLSv1.2")


def tls11_context(*, server_side: bool) -> ssl.SSLContext:
    """A context that speaks TLS 1.1 only, or skips the test when OpenSSL cannot."""
    if not ssl.HAS_TLSv1_1:
        pytest.skip("the local OpenSSL was built without TLS 1.1")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = ssl.TLSVersion.TLSv1_1
            context.maximum_version = ssl.TLSVersion.TLSv1_1
        # OpenSSL 3 allows TLS 1.1 (SHA-1 and MD5 in its handshake) only at level 0.
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    except (ValueError, ssl.SSLError) as error:
        pytest.skip(f"the local OpenSSL refuses to configure TLS 1.1: {error}")
    if not server_side:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def test_tls11_client_is_refused(server: ssl.SSLContext, local_files: tls.CertificateFiles) -> None:
    old_client = tls11_context(server_side=False)
    # First prove that this client can speak TLS 1.1 at all, to a server that allows it;
    # otherwise its failure against ours would show nothing.
    old_server = tls11_context(server_side=True)
    old_server.load_cert_chain(local_files.certfile, local_files.keyfile)
    with serve_once(old_server) as (address, old_server_side):
        try:
            _, version = connect(old_client, address, "localhost")
        except ssl.SSLError as error:
            pytest.skip(f"the local OpenSSL cannot complete a TLS 1.1 handshake: {error}")
    assert old_server_side.error is None
    assert version == "TLSv1.1"

    client_error, server_error = refused(old_client, server)
    assert isinstance(server_error, ssl.SSLError)
    assert server_error.reason == "UNSUPPORTED_PROTOCOL"
    assert client_error.reason == "TLSV1_ALERT_PROTOCOL_VERSION"


def test_client_without_the_ca_refuses_the_server(server: ssl.SSLContext) -> None:
    client_error, server_error = refused(tls.client_context(), server)
    assert isinstance(client_error, ssl.SSLCertVerificationError)
    assert "unable to get local issuer certificate" in client_error.verify_message
    assert server_error is not None  # the client's alert ends the server's handshake too


def test_client_trusting_another_ca_refuses_the_server(
    server: ssl.SSLContext, tmp_path: Path
) -> None:
    other = tls.ensure_certificates(tmp_path / "other", prefer_mkcert=False)
    client_error, _ = refused(tls.client_context(other.cafile), server)
    assert isinstance(client_error, ssl.SSLCertVerificationError)


def test_client_refuses_a_name_the_certificate_does_not_hold(
    server: ssl.SSLContext, client: ssl.SSLContext
) -> None:
    client_error, _ = refused(client, server, server_hostname="chat.example.com")
    assert isinstance(client_error, ssl.SSLCertVerificationError)
    assert "Hostname mismatch" in client_error.verify_message


def test_server_context_with_an_encrypted_key(
    local_files: tls.CertificateFiles, client: ssl.SSLContext, tmp_path: Path
) -> None:
    key = serialization.load_pem_private_key(local_files.keyfile.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted-key.pem"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"correct horse"),
        )
    )
    with pytest.raises(ssl.SSLError):
        tls.server_context(local_files.certfile, encrypted, password="wrong")
    server = tls.server_context(local_files.certfile, encrypted, password="correct horse")
    with serve_once(server) as (address, _):
        alpn, _ = connect(client, address, "localhost")
    assert alpn == "http/1.1"


def test_server_context_refuses_a_key_that_does_not_match(
    local_files: tls.CertificateFiles, tmp_path: Path
) -> None:
    other = tls.ensure_certificates(tmp_path / "other", prefer_mkcert=False)
    with pytest.raises(ssl.SSLError):
        tls.server_context(local_files.certfile, other.keyfile)


# --- the local CA -----------------------------------------------------------------------


def test_local_ca_layout_and_private_key_modes(local_files: tls.CertificateFiles) -> None:
    directory = local_files.certfile.parent
    assert local_files == tls.CertificateFiles.in_directory(directory, "local CA")
    assert sorted(path.name for path in directory.iterdir()) == [
        "ca-key.pem",
        CA_FILE,
        CERT_FILE,
        KEY_FILE,
    ]
    assert mode(local_files.keyfile) == 0o600
    assert mode(directory / "ca-key.pem") == 0o600
    assert mode(local_files.certfile) == 0o644
    assert mode(local_files.cafile) == 0o644
    assert san_names(local_files.certfile) == {"localhost", "127.0.0.1", "::1"}


def test_local_ca_certificate(local_files: tls.CertificateFiles) -> None:
    ca = x509.load_pem_x509_certificate(local_files.cafile.read_bytes())
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert (constraints.value.ca, constraints.value.path_length) == (True, 0)
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign
    assert usage.crl_sign
    assert not usage.digital_signature
    common_name = ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert common_name == f"chatd local development CA {socket.gethostname()}"[:64]
    lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert timedelta(days=3640) < lifetime <= timedelta(days=3660)


def test_leaf_certificate(local_files: tls.CertificateFiles) -> None:
    leaf = x509.load_pem_x509_certificate(local_files.certfile.read_bytes())
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc <= timedelta(days=825)


def test_ensure_local_ca_is_made_once(tmp_path: Path) -> None:
    ca_path, key_path = tls.ensure_local_ca(tmp_path)
    first = (ca_path.read_bytes(), key_path.read_bytes())
    assert tls.ensure_local_ca(tmp_path) == (ca_path, key_path)
    assert (ca_path.read_bytes(), key_path.read_bytes()) == first
    tls.issue_leaf(tmp_path, ["localhost"])
    tls.issue_leaf(tmp_path, ["127.0.0.1"])
    assert (ca_path.read_bytes(), key_path.read_bytes()) == first


def test_ensure_local_ca_replaces_a_ca_whose_key_is_gone(tmp_path: Path) -> None:
    ca_path, key_path = tls.ensure_local_ca(tmp_path)
    old_ca = ca_path.read_bytes()
    key_path.unlink()
    tls.ensure_local_ca(tmp_path)
    assert ca_path.read_bytes() != old_ca
    assert mode(key_path) == 0o600


def test_issue_leaf_handles_names_and_addresses(tmp_path: Path) -> None:
    files = tls.issue_leaf(tmp_path, ["Chat.Example.test", "*.dev.test", "10.1.2.3", "fe80::1"])
    assert san_names(files.certfile) == {"chat.example.test", "*.dev.test", "10.1.2.3", "fe80::1"}


@pytest.mark.parametrize("host", ["", "bad host", "under_score.test", "-dash.test", "a..b"])
def test_issue_leaf_refuses_malformed_hosts(tmp_path: Path, host: str) -> None:
    with pytest.raises(ValueError, match="neither an IP address nor a valid host name"):
        tls.issue_leaf(tmp_path, [host])
    assert not (tmp_path / CERT_FILE).exists()


def test_hosts_must_be_a_sequence_of_names(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="not the string 'localhost'"):
        tls.ensure_certificates(tmp_path, "localhost")
    with pytest.raises(ValueError, match="at least one host"):
        tls.issue_leaf(tmp_path, [])


def test_issue_leaf_refuses_too_long_a_validity(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at most 825 days"):
        tls.issue_leaf(tmp_path, validity=timedelta(days=826))


# --- ensure_certificates ----------------------------------------------------------------


def test_ensure_certificates_reuses_good_files(tmp_path: Path) -> None:
    first = tls.ensure_certificates(tmp_path, prefer_mkcert=False)
    contents = {path: path.read_bytes() for path in tmp_path.iterdir()}
    second = tls.ensure_certificates(tmp_path, prefer_mkcert=True)  # reuse wins over mkcert
    assert second == first
    assert second.issuer == "local CA"
    assert {path: path.read_bytes() for path in tmp_path.iterdir()} == contents


def test_ensure_certificates_force_reissues(tmp_path: Path) -> None:
    files = tls.ensure_certificates(tmp_path, prefer_mkcert=False)
    old_cert, old_ca = files.certfile.read_bytes(), files.cafile.read_bytes()
    tls.ensure_certificates(tmp_path, prefer_mkcert=False, force=True)
    assert files.certfile.read_bytes() != old_cert
    assert files.cafile.read_bytes() == old_ca


def test_ensure_certificates_reissues_for_a_new_host(tmp_path: Path) -> None:
    files = tls.ensure_certificates(tmp_path, ["localhost"], prefer_mkcert=False)
    old_ca = files.cafile.read_bytes()
    assert tls.certificate_problem(tmp_path, ["localhost", "chat.test"]) == (
        "cert.pem does not name chat.test"
    )
    tls.ensure_certificates(tmp_path, ["localhost", "chat.test"], prefer_mkcert=False)
    assert san_names(files.certfile) == {"localhost", "chat.test"}
    assert files.cafile.read_bytes() == old_ca  # the trusted CA is kept


def test_ensure_certificates_reissues_an_expiring_certificate(tmp_path: Path) -> None:
    files = tls.issue_leaf(tmp_path, validity=timedelta(days=10))
    old_ca = files.cafile.read_bytes()
    problem = tls.certificate_problem(tmp_path)
    assert problem is not None
    assert problem.startswith("cert.pem expires on ")
    tls.ensure_certificates(tmp_path, prefer_mkcert=False)
    assert not_after(files.certfile) - datetime.now(UTC) > timedelta(days=800)
    assert files.cafile.read_bytes() == old_ca


def test_certificate_problem_explains_what_is_wrong(tmp_path: Path) -> None:
    assert tls.certificate_problem(tmp_path) == "cert.pem does not exist"
    files = tls.ensure_certificates(tmp_path / "a", prefer_mkcert=False)
    other = tls.ensure_certificates(tmp_path / "b", prefer_mkcert=False)
    assert tls.certificate_problem(files.certfile.parent) is None
    later = datetime.now(UTC) + timedelta(days=900)
    problem = tls.certificate_problem(files.certfile.parent, now=later)
    assert problem is not None
    assert "expired on" in problem

    files.keyfile.write_bytes(other.keyfile.read_bytes())
    assert tls.certificate_problem(files.certfile.parent) == "key.pem is not the key of cert.pem"
    files.keyfile.write_bytes(other.certfile.read_bytes())
    problem = tls.certificate_problem(files.certfile.parent)
    assert problem is not None
    assert problem.startswith("cannot read key.pem")

    tls.issue_leaf(files.certfile.parent)
    files.cafile.write_bytes(other.cafile.read_bytes())
    assert tls.certificate_problem(files.certfile.parent) == "cert.pem was not signed by ca.pem"


def test_fallback_when_mkcert_is_not_installed(tmp_path: Path, without_mkcert: None) -> None:
    assert tls.find_mkcert() is None
    files = tls.ensure_certificates(tmp_path / "tls", prefer_mkcert=True)
    assert files.issuer == "local CA"
    assert (tmp_path / "tls" / "ca-key.pem").is_file()
    with pytest.raises(tls.MkcertError, match="not installed"):
        tls.issue_with_mkcert(tmp_path / "other")


def test_mkcert_variable_that_names_nothing_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MKCERT_ENV, "/nonexistent/mkcert")
    with pytest.raises(tls.MkcertError, match="is not an executable file"):
        tls.find_mkcert()


def test_importing_tls_does_not_import_cryptography() -> None:
    code = "import sys, tls; assert 'cryptography' not in sys.modules; tls.issue_leaf"
    completed = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        check=False,
    )
    assert completed.returncode == 0, completed.stderr


# --- mkcert -----------------------------------------------------------------------------


def test_mkcert_caroot(mkcert_binary: str, tmp_path: Path) -> None:
    assert tls.mkcert_caroot(mkcert_binary) == tmp_path / "caroot"


def test_issue_with_mkcert(mkcert_binary: str, tmp_path: Path) -> None:
    files = tls.issue_with_mkcert(tmp_path / "tls")
    assert files == tls.CertificateFiles.in_directory(tmp_path / "tls", "mkcert")
    assert files.cafile.read_bytes() == (tmp_path / "caroot" / "rootCA.pem").read_bytes()
    assert sorted(path.name for path in (tmp_path / "tls").iterdir()) == [
        CA_FILE,
        CERT_FILE,
        KEY_FILE,
    ]
    assert mode(files.keyfile) == 0o600
    assert san_names(files.certfile) == {"localhost", "127.0.0.1", "::1"}
    assert tls.certificate_problem(tmp_path / "tls") is None

    server = tls.server_context(files.certfile, files.keyfile)
    client = tls.client_context(files.cafile)
    for server_hostname in ("localhost", "127.0.0.1"):
        with serve_once(server) as (address, server_side):
            alpn, _ = connect(client, address, server_hostname)
        assert server_side.error is None
        assert alpn == "http/1.1"


def test_ensure_certificates_prefers_mkcert_and_reuses_its_files(
    mkcert_binary: str, tmp_path: Path
) -> None:
    files = tls.ensure_certificates(tmp_path / "tls")
    assert files.issuer == "mkcert"
    cert = files.certfile.read_bytes()
    again = tls.ensure_certificates(tmp_path / "tls")
    assert again == files
    assert files.certfile.read_bytes() == cert

    wider = tls.ensure_certificates(tmp_path / "tls", ["localhost", "chat.test"])
    assert wider.issuer == "mkcert"
    assert san_names(wider.certfile) == {"localhost", "chat.test"}


def test_mkcert_failure_is_reported_and_ensure_falls_back(
    mkcert_binary: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    not_a_directory = tmp_path / "caroot-is-a-file"
    not_a_directory.write_text("")
    monkeypatch.setenv("CAROOT", str(not_a_directory))
    with pytest.raises(tls.MkcertError, match="exited with status"):
        tls.issue_with_mkcert(tmp_path / "tls")
    assert not (tmp_path / "tls" / CERT_FILE).exists()

    files = tls.ensure_certificates(tmp_path / "tls")
    assert files.issuer == "local CA"
    assert tls.certificate_problem(tmp_path / "tls") is None
    assert "mkcert failed, using the local CA instead" in caplog.text


# --- python -m tls ----------------------------------------------------------------------


def test_cli_with_the_local_ca(tmp_path: Path) -> None:
    directory = tmp_path / "tls"
    completed = run_cli("--dir", str(directory), "--no-mkcert")
    assert completed.returncode == 0, completed.stderr
    assert "Certificate issued by local CA" in completed.stdout
    assert "sudo update-ca-certificates" in completed.stdout
    assert "certutil -d sql:$HOME/.pki/nssdb -A -t C,, -n chatd-local-ca" in completed.stdout
    assert "security add-trusted-cert" in completed.stdout
    assert f"--certfile {directory / CERT_FILE}" in completed.stdout
    assert f"--keyfile {directory / KEY_FILE}" in completed.stdout
    assert tls.certificate_problem(directory) is None
    assert mode(directory / KEY_FILE) == mode(directory / "ca-key.pem") == 0o600

    cert = (directory / CERT_FILE).read_bytes()
    again = run_cli("--dir", str(directory), "--no-mkcert")
    assert again.returncode == 0, again.stderr
    assert "reusing the certificate" in again.stderr
    assert (directory / CERT_FILE).read_bytes() == cert


def test_cli_with_mkcert(mkcert_binary: str, tmp_path: Path) -> None:
    directory = tmp_path / "tls"
    completed = run_cli("--dir", str(directory), "--host", "localhost")
    assert completed.returncode == 0, completed.stderr
    assert "Certificate issued by mkcert" in completed.stdout
    assert "mkcert -install" in completed.stdout
    assert san_names(directory / CERT_FILE) == {"localhost"}


def test_cli_reports_a_bad_host_without_a_traceback(tmp_path: Path) -> None:
    completed = run_cli("--dir", str(tmp_path), "--no-mkcert", "--host", "bad host")
    assert completed.returncode == 1
    assert "'bad host' is neither an IP address nor a valid host name" in completed.stderr
    assert "Traceback" not in completed.stderr
