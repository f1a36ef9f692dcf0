"""A local development CA made with the ``cryptography`` package, for machines without mkcert.

The CA lives beside the certificates it signs (``ca.pem``, ``ca-key.pem``) and is made
once: re-issuing a server certificate reuses it, so a CA that was added to a trust store
stays trusted. Keys are ECDSA P-256, fast to make and accepted by every TLS client; the
certificates carry what browsers and ``VERIFY_X509_STRICT`` require (subjectAltName,
key identifiers, critical basicConstraints and keyUsage). Private keys are created with
mode 0600 and are never readable by anyone else, not even for a moment.

``certificate_problem`` reads a certificate directory, whoever issued it, and says why it
cannot be reused, which is how ``tls.ensure_certificates`` decides to re-issue.
"""

from __future__ import annotations

import contextlib
import getpass
import ipaddress
import logging
import os
import socket
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tls.context import StrPath
from tls.mkcert import (
    CA_FILE,
    CERT_FILE,
    DEFAULT_HOSTS,
    ISSUER_LOCAL_CA,
    ISSUER_MKCERT,
    KEY_FILE,
    MIN_REMAINING_VALIDITY,
    CertificateFiles,
    Issuer,
    _host_key,
    _host_tuple,
)

__all__ = [
    "CA_KEY_FILE",
    "CA_VALIDITY",
    "LEAF_VALIDITY",
    "certificate_problem",
    "ensure_local_ca",
    "issue_leaf",
    "issuer_of",
]

logger = logging.getLogger(__name__)

CA_KEY_FILE: Final = "ca-key.pem"

CA_VALIDITY: Final = timedelta(days=3650)
"""About ten years: trusting a CA is a manual step nobody wants to repeat."""

LEAF_VALIDITY: Final = timedelta(days=825)
"""The longest validity Apple platforms accept for a TLS server certificate."""

CLOCK_SKEW: Final = timedelta(hours=1)
"""Certificates start this long in the past, for clients whose clock runs behind."""

CA_NAME: Final = "chatd local development CA"
LEAF_ORGANIZATION: Final = "chatd local development certificate"

_IssuerKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class _UnusableFiles(Exception):
    """Existing files cannot be used; the message says why, for the log."""


def ensure_local_ca(directory: StrPath) -> tuple[Path, Path]:
    """Return ``(ca.pem, ca-key.pem)`` in ``directory``, creating the CA the first time.

    An existing CA is kept while its key matches, it is a CA, and it is valid for at
    least ``MIN_REMAINING_VALIDITY`` more; otherwise a new one replaces it (and a warning
    says that clients must trust the new one).
    """
    directory = Path(directory)
    _ensure_ca(directory)
    return directory / CA_FILE, directory / CA_KEY_FILE


def issue_leaf(
    directory: StrPath,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    *,
    validity: timedelta = LEAF_VALIDITY,
) -> CertificateFiles:
    """Issue a server certificate for ``hosts`` (names and IP addresses) into ``directory``.

    The certificate is signed by the directory's local CA (made first if needed), valid
    for ``validity`` (at most ``LEAF_VALIDITY``, never past the CA's own expiry), for
    TLS servers only. ``key.pem`` and then ``cert.pem`` are each replaced atomically.
    """
    directory = Path(directory)
    hosts = _host_tuple(hosts)
    if not timedelta(0) < validity <= LEAF_VALIDITY:
        raise ValueError(f"validity must be more than 0 and at most {LEAF_VALIDITY.days} days")
    names = [_general_name(host) for host in hosts]
    ca_cert, ca_key = _ensure_ca(directory)

    key = ec.generate_private_key(ec.SECP256R1())
    not_before = datetime.now(UTC) - CLOCK_SKEW
    not_after = min(not_before + validity, ca_cert.not_valid_after_utc)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, LEAF_ORGANIZATION),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, _user_at_host()),
        ]
    )
    ca_key_id = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_key_id),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = CertificateFiles.in_directory(directory, ISSUER_LOCAL_CA)
    # The key goes first: a server that reloads in between sees an old certificate with
    # a new key and fails loudly, rather than serving a mismatched pair.
    _write_file(files.keyfile, _private_pem(key), mode=0o600)
    _write_file(files.certfile, certificate.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return files


def certificate_problem(
    directory: StrPath,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    *,
    min_remaining: timedelta = MIN_REMAINING_VALIDITY,
    now: datetime | None = None,
) -> str | None:
    """Say why the files in ``directory`` cannot serve ``hosts``, or ``None`` if they can.

    They can when ``cert.pem``, ``key.pem`` and ``ca.pem`` exist and parse, the key
    matches the certificate, ``ca.pem`` signed it, both certificates are valid from
    ``now`` for at least ``min_remaining`` more, and the certificate's subjectAltName
    lists every one of ``hosts``. Raises ``ValueError`` for a malformed host (and for
    no host at all).
    """
    wanted = [(host, _host_key(host)) for host in _host_tuple(hosts)]
    when = now if now is not None else datetime.now(UTC)
    directory = Path(directory)
    try:
        certificate = _read_certificate(directory / CERT_FILE)
        key = _read_private_key(directory / KEY_FILE)
        ca_cert = _read_certificate(directory / CA_FILE)
        if _public_der(key.public_key()) != _public_der(certificate.public_key()):
            raise _UnusableFiles(f"{KEY_FILE} is not the key of {CERT_FILE}")
        try:
            certificate.verify_directly_issued_by(ca_cert)
        except (ValueError, TypeError, InvalidSignature) as error:
            raise _UnusableFiles(f"{CERT_FILE} was not signed by {CA_FILE}") from error
        _check_validity(CERT_FILE, certificate, when, min_remaining)
        _check_validity(CA_FILE, ca_cert, when, min_remaining)
        named = _names_in(certificate)
    except _UnusableFiles as problem:
        return str(problem)
    missing = [host for host, wanted_key in wanted if wanted_key not in named]
    if missing:
        return f"{CERT_FILE} does not name {', '.join(missing)}"
    return None


def issuer_of(directory: StrPath) -> Issuer:
    """``"local CA"`` when ``ca.pem`` is this directory's local CA, else ``"mkcert"``."""
    try:
        _load_ca(Path(directory))
    except _UnusableFiles:
        return ISSUER_MKCERT
    return ISSUER_LOCAL_CA


def _ensure_ca(directory: Path) -> tuple[x509.Certificate, _IssuerKey]:
    """Load the directory's CA if it is still usable, else make and store a new one."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        ca_cert, ca_key = _load_ca(directory)
        _check_validity(CA_FILE, ca_cert, datetime.now(UTC), MIN_REMAINING_VALIDITY)
    except _UnusableFiles as problem:
        if (directory / CA_KEY_FILE).exists():
            logger.warning(
                "replacing the local CA in %s (%s): clients must trust the new %s",
                directory,
                problem,
                CA_FILE,
            )
        return _create_ca(directory)
    return ca_cert, ca_key


def _create_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Make a CA that may sign server certificates only (pathlen 0), and store it."""
    key = ec.generate_private_key(ec.SECP256R1())
    common_name = f"{CA_NAME} {socket.gethostname()}"[:64]  # X.520 upper bound
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, CA_NAME),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, _user_at_host()),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    not_before = datetime.now(UTC) - CLOCK_SKEW
    key_id = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(key_id, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(key_id),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    _write_file(directory / CA_KEY_FILE, _private_pem(key), mode=0o600)
    _write_file(
        directory / CA_FILE, certificate.public_bytes(serialization.Encoding.PEM), mode=0o644
    )
    logger.info("created a local CA in %s: %s", directory, common_name)
    return certificate, key


def _load_ca(directory: Path) -> tuple[x509.Certificate, _IssuerKey]:
    """Read ``ca.pem`` and ``ca-key.pem``; ``_UnusableFiles`` if they are not a CA pair."""
    ca_cert = _read_certificate(directory / CA_FILE)
    ca_key = _read_private_key(directory / CA_KEY_FILE)
    if not isinstance(ca_key, _IssuerKey):
        raise _UnusableFiles(f"{CA_KEY_FILE} is not an EC or RSA key")
    if _public_der(ca_key.public_key()) != _public_der(ca_cert.public_key()):
        raise _UnusableFiles(f"{CA_KEY_FILE} is not the key of {CA_FILE}")
    try:
        constraints = ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound as error:
        raise _UnusableFiles(f"{CA_FILE} is not a CA certificate") from error
    if not constraints.ca:
        raise _UnusableFiles(f"{CA_FILE} is not a CA certificate")
    try:
        ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound as error:
        raise _UnusableFiles(f"{CA_FILE} has no subjectKeyIdentifier") from error
    return ca_cert, ca_key


def _check_validity(
    label: str, certificate: x509.Certificate, now: datetime, min_remaining: timedelta
) -> None:
    if certificate.not_valid_before_utc > now:
        raise _UnusableFiles(f"{label} is not valid before {certificate.not_valid_before_utc}")
    expiry = certificate.not_valid_after_utc
    if expiry - now < min_remaining:
        verb = "expired" if expiry <= now else "expires"
        raise _UnusableFiles(f"{label} {verb} on {expiry:%Y-%m-%d}")


def _names_in(certificate: x509.Certificate) -> set[tuple[str, str]]:
    """The host keys of every DNS name and IP address in the subjectAltName."""
    try:
        alt_names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound as error:
        raise _UnusableFiles(f"{CERT_FILE} has no subjectAltName") from error
    names = {("dns", name.lower()) for name in alt_names.value.get_values_for_type(x509.DNSName)}
    for address in alt_names.value.get_values_for_type(x509.IPAddress):
        names.add(("ip", str(address)))
    return names


def _general_name(host: str) -> x509.GeneralName:
    """A subjectAltName entry for ``host``: an IP address, or a (possibly wildcard) name."""
    kind, value = _host_key(host)
    if kind == "ip":
        return x509.IPAddress(ipaddress.ip_address(value))
    return x509.DNSName(value)


def _key_usage(
    *, digital_signature: bool = False, key_cert_sign: bool = False, crl_sign: bool = False
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _read_certificate(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError as error:
        raise _UnusableFiles(f"{path.name} does not exist") from error
    except (OSError, ValueError) as error:
        raise _UnusableFiles(f"cannot read {path.name}: {error}") from error


def _read_private_key(path: Path) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError as error:
        raise _UnusableFiles(f"{path.name} does not exist") from error
    except (OSError, ValueError, TypeError, UnsupportedAlgorithm) as error:
        raise _UnusableFiles(f"cannot read {path.name}: {error}") from error


def _public_der(public_key: PublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_file(path: Path, data: bytes, *, mode: int) -> None:
    """Replace ``path`` atomically with ``data``, readable only as ``mode`` allows.

    The temporary file is created 0600 by ``mkstemp``, so a private key is never
    readable by others at any point, whatever the umask.
    """
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "wb") as stream:
            os.chmod(temporary, mode)
            stream.write(data)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def _user_at_host() -> str:
    """``user@host`` for the certificate subject, as mkcert writes it."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry, as in some containers
        user = "unknown"
    return f"{user}@{socket.gethostname()}"[:64]
