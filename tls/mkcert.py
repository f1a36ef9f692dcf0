"""Certificates for local ``wss://`` development: ``mkcert`` when installed, else a local CA.

Every certificate directory has the same layout, whoever issued it::

    cert.pem     the server certificate (for localhost, 127.0.0.1 and ::1 by default)
    key.pem      its private key, mode 0600
    ca.pem       the CA certificate that signed it: what a client or browser must trust
    ca-key.pem   the CA's private key, mode 0600 (only for the local CA; mkcert keeps its
                 own in ``mkcert -CAROOT``)

``ensure_certificates`` reuses a directory's files while they are still good and
otherwise issues new ones: with `mkcert <https://github.com/FiloSottile/mkcert>`_ when
the binary is found (its CA is the one ``mkcert -install`` puts in the system and browser
trust stores), or with the ``cryptography`` package through ``tls.localca`` when it is
not, so ``wss://`` works on any machine.

Finding and running mkcert needs only the standard library; ``tls.localca`` (and with it
``cryptography``) is imported when certificates are checked or issued without mkcert.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Final, Literal

from tls.context import StrPath

__all__ = [
    "CA_FILE",
    "CERT_FILE",
    "DEFAULT_HOSTS",
    "ISSUER_LOCAL_CA",
    "ISSUER_MKCERT",
    "KEY_FILE",
    "MIN_REMAINING_VALIDITY",
    "CertificateFiles",
    "Issuer",
    "MkcertError",
    "ensure_certificates",
    "find_mkcert",
    "issue_with_mkcert",
    "mkcert_caroot",
    "trust_instructions",
]

logger = logging.getLogger(__name__)

CERT_FILE: Final = "cert.pem"
KEY_FILE: Final = "key.pem"
CA_FILE: Final = "ca.pem"

DEFAULT_HOSTS: Final = ("localhost", "127.0.0.1", "::1")
"""The names a local client uses for this machine: by name, over IPv4 and over IPv6."""

MIN_REMAINING_VALIDITY: Final = timedelta(days=30)
"""A certificate that expires sooner than this is re-issued rather than reused."""

MKCERT_ENV: Final = "MKCERT"
"""Environment variable naming the mkcert binary (a path, or a name looked up on PATH)."""

MKCERT_TIMEOUT: Final = 60.0
"""Seconds mkcert may take; creating its CA the first time generates an RSA key."""

# A host name label: letters, digits and inner hyphens, at most 63 characters (RFC 1123).
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DNS_NAME = re.compile(rf"(?:\*\.)?{_LABEL}(?:\.{_LABEL})*", re.IGNORECASE)


Issuer = Literal["mkcert", "local CA"]
ISSUER_MKCERT: Final[Issuer] = "mkcert"
ISSUER_LOCAL_CA: Final[Issuer] = "local CA"


class MkcertError(RuntimeError):
    """mkcert is missing, misconfigured, or failed; the message says which and why."""


@dataclass(frozen=True, slots=True)
class CertificateFiles:
    """The PEM files a TLS server needs and the CA file its clients must trust."""

    certfile: Path
    keyfile: Path
    cafile: Path
    issuer: Issuer

    @classmethod
    def in_directory(cls, directory: Path, issuer: Issuer) -> CertificateFiles:
        """The standard layout of a certificate directory (see the module docstring)."""
        return cls(directory / CERT_FILE, directory / KEY_FILE, directory / CA_FILE, issuer)


def find_mkcert() -> str | None:
    """Return the path of the mkcert binary, or ``None`` when it is not installed.

    ``$MKCERT`` names the binary when set (a path, or a name looked up on ``PATH``);
    otherwise ``mkcert`` is looked up on ``PATH``. A ``$MKCERT`` that names nothing
    executable raises ``MkcertError``: an explicit setting that is wrong should not
    quietly fall back to another CA.
    """
    configured = os.environ.get(MKCERT_ENV)
    if configured:
        found = shutil.which(configured)
        if found is None:
            raise MkcertError(f"${MKCERT_ENV}={configured!r} is not an executable file")
        return found
    return shutil.which("mkcert")


def mkcert_caroot(binary: str) -> Path:
    """Return the directory holding mkcert's CA (``rootCA.pem``), from ``mkcert -CAROOT``.

    mkcert honours ``$CAROOT``; the directory may not exist until mkcert first issues
    a certificate, which creates the CA in it.
    """
    output = _run_mkcert([binary, "-CAROOT"])
    caroot = output.strip()
    if not caroot:
        raise MkcertError(f"{binary} -CAROOT printed no directory")
    return Path(caroot)


def issue_with_mkcert(
    directory: StrPath, hosts: Sequence[str] = DEFAULT_HOSTS, *, binary: str | None = None
) -> CertificateFiles:
    """Issue a certificate for ``hosts`` with mkcert into ``directory``.

    mkcert creates its CA on first use (``mkcert -install`` is what makes browsers trust
    it; this function never changes a trust store). The key is ECDSA P-256, like the
    local CA's, and ``rootCA.pem`` is copied to ``ca.pem`` so the layout is the same
    whoever issued the files. Existing files are replaced only once mkcert succeeded.
    """
    hosts = _host_tuple(hosts)
    if binary is None:
        binary = find_mkcert()
        if binary is None:
            raise MkcertError("mkcert is not installed (and $MKCERT is not set)")
    directory = Path(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    files = CertificateFiles.in_directory(directory, ISSUER_MKCERT)
    with tempfile.TemporaryDirectory(dir=directory, prefix=".mkcert-") as scratch:
        new_cert = Path(scratch) / CERT_FILE
        new_key = Path(scratch) / KEY_FILE
        command = [binary, "-ecdsa", "-cert-file", str(new_cert), "-key-file", str(new_key)]
        _run_mkcert([*command, "--", *hosts])
        root_ca = mkcert_caroot(binary) / "rootCA.pem"
        if not root_ca.is_file():
            raise MkcertError(f"mkcert issued a certificate but {root_ca} does not exist")
        new_ca = Path(scratch) / CA_FILE
        shutil.copyfile(root_ca, new_ca)
        os.chmod(new_key, 0o600)
        os.chmod(new_cert, 0o644)
        os.chmod(new_ca, 0o644)
        # The key goes first: a server that reloads in between sees an old certificate
        # with a new key and fails loudly, rather than serving a mismatched pair.
        os.replace(new_key, files.keyfile)
        os.replace(new_cert, files.certfile)
        os.replace(new_ca, files.cafile)
    return files


def ensure_certificates(
    directory: StrPath,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    *,
    prefer_mkcert: bool = True,
    force: bool = False,
    min_remaining: timedelta = MIN_REMAINING_VALIDITY,
) -> CertificateFiles:
    """Return certificate files for ``hosts`` in ``directory``, issuing them if needed.

    Existing files are reused when the certificate names every host, is valid for at
    least ``min_remaining`` more, matches the key and was signed by ``ca.pem``. Otherwise
    (or with ``force``) new ones are issued: by mkcert when ``prefer_mkcert`` and the
    binary is found, else by the local CA in the same directory, which is created once
    and then kept, so a CA that was trusted stays trusted. If mkcert is found but fails,
    the local CA is used and a warning logged.
    """
    from tls import localca  # noqa: PLC0415 - imports cryptography only when needed

    hosts = _host_tuple(hosts)
    directory = Path(directory)
    if not force:
        problem = localca.certificate_problem(directory, hosts, min_remaining=min_remaining)
        if problem is None:
            files = CertificateFiles.in_directory(directory, localca.issuer_of(directory))
            logger.info("reusing the certificate in %s (issued by %s)", directory, files.issuer)
            return files
        logger.info("issuing a certificate in %s: %s", directory, problem)
    binary = find_mkcert() if prefer_mkcert else None
    if binary is not None:
        try:
            return issue_with_mkcert(directory, hosts, binary=binary)
        except MkcertError as error:
            logger.warning("mkcert failed, using the local CA instead: %s", error)
    return localca.issue_leaf(directory, hosts)


def trust_instructions(files: CertificateFiles) -> str:
    """Explain, as shell commands to copy, how to make clients trust ``files.cafile``."""
    ca = shlex.quote(str(files.cafile.resolve()))
    if files.issuer == ISSUER_MKCERT:
        return (
            "Trust the mkcert CA (system store, and Firefox/Chromium when certutil from\n"
            "libnss3-tools is installed) with:\n"
            "    mkcert -install\n"
            f"Python clients can instead use tls.client_context(cafile={ca})."
        )
    name = "chatd-local-ca"
    return (
        "To trust the local CA, add ca.pem to the trust store of each client:\n"
        "  Debian/Ubuntu (the system store: curl, wget, Python's ssl module):\n"
        f"    sudo cp {ca} /usr/local/share/ca-certificates/{name}.crt"
        " && sudo update-ca-certificates\n"
        "  Fedora/RHEL:\n"
        f"    sudo cp {ca} /etc/pki/ca-trust/source/anchors/{name}.pem"
        " && sudo update-ca-trust\n"
        "  Chromium/Chrome on Linux (NSS; certutil is in libnss3-tools):\n"
        f"    certutil -d sql:$HOME/.pki/nssdb -A -t C,, -n {name} -i {ca}\n"
        "  Firefox: Settings > Privacy & Security > Certificates > View Certificates >\n"
        f"    Authorities > Import {ca}\n"
        "  macOS:\n"
        "    sudo security add-trusted-cert -d -r trustRoot"
        f" -k /Library/Keychains/System.keychain {ca}\n"
        "  Windows:\n"
        f"    certutil -addstore -user Root {ca}\n"
        f"  Python clients: tls.client_context(cafile={ca})\n"
        "Keep ca-key.pem private: whoever has it can impersonate any site to a machine\n"
        "that trusts this CA."
    )


def _host_tuple(hosts: Sequence[str]) -> tuple[str, ...]:
    """Check ``hosts`` before anything is written: names and addresses, at least one."""
    if isinstance(hosts, str):
        raise TypeError(f"hosts must be a sequence of names, not the string {hosts!r}")
    if not hosts:
        raise ValueError("a certificate needs at least one host name or IP address")
    for host in hosts:
        _host_key(host)
    return tuple(hosts)


def _host_key(host: str) -> tuple[str, str]:
    """Normalise a host for comparison: ``("ip", compressed)`` or ``("dns", a-label)``."""
    try:
        return ("ip", str(ipaddress.ip_address(host)))
    except ValueError:
        pass
    try:
        # Internationalised names go into certificates as A-labels (RFC 5280 §7.2).
        a_label = host.encode("idna").decode("ascii").lower()
    except UnicodeError as error:
        raise ValueError(f"{host!r} is neither an IP address nor a valid host name") from error
    if len(a_label) > 253 or not _DNS_NAME.fullmatch(a_label):
        raise ValueError(f"{host!r} is neither an IP address nor a valid host name")
    return ("dns", a_label)


def _run_mkcert(command: list[str]) -> str:
    """Run mkcert and return its standard output; failures become ``MkcertError``."""
    try:
        completed = subprocess.run(
            command, capture_output=True, text=True, timeout=MKCERT_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise MkcertError(f"could not run {shlex.join(command)}: {error}") from error
    if completed.returncode != 0:
        detail = completed.stderr.strip() or completed.stdout.strip() or "no output"
        raise MkcertError(
            f"{shlex.join(command)} exited with status {completed.returncode}: {detail}"
        )
    return completed.stdout
