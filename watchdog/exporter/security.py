"""What protects the HTTP endpoint: TLS (optionally mutual) and HTTP basic auth.

The conventions are those of Prometheus' exporter-toolkit web config, so one
scrape configuration fits every exporter on a host: a PEM certificate and key,
an optional client CA that makes client certificates mandatory (the only
client-auth mode that is safe), TLS 1.2 at least, and users with bcrypt
password hashes. Everything is checked when the daemon starts, in
``check-config`` and on SIGHUP, with one line naming the setting and the file.
"""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import os
import secrets
import ssl
import stat
import threading
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import structlog

from watchdog.config import BasicAuthUser, ConfigError, MetricsSettings

log = structlog.get_logger("watchdog.exporter.security")

TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
BCRYPT_MAX_PASSWORD_BYTES = 72
"""bcrypt looks at no more than this; longer passwords are refused, never truncated."""
CACHE_SIZE = 100
"""Verdicts remembered, as in exporter-toolkit: a scraper's repeated login costs no bcrypt."""


@dataclass(frozen=True)
class WebSecurity:
    """TLS and basic auth of the endpoint; the default is neither (plain, open HTTP)."""

    tls: ssl.SSLContext | None = None
    auth: BasicAuth | None = None

    @property
    def scheme(self) -> str:
        """``https`` or ``http``."""
        return "https" if self.tls is not None else "http"

    @classmethod
    def from_settings(cls, settings: MetricsSettings) -> WebSecurity:
        """Read the certificate files and users named in ``settings``.

        Raises:
            ConfigError: a file is missing, unreadable or not what the setting says,
                or users are configured but ``bcrypt`` is not installed.
        """
        auth = BasicAuth(settings.basic_auth) if settings.basic_auth else None
        return cls(tls=server_context(settings), auth=auth)


class _EncryptedKeyError(Exception):
    """The key file asks for a passphrase: the daemon has none to give."""


def _no_passphrase() -> str:
    # Without a callback OpenSSL would prompt on the terminal and hang a service.
    raise _EncryptedKeyError


def _require_readable(key: str, path: str) -> None:
    try:
        # Non-blocking: opening a FIFO would wait for a writer, and so would OpenSSL after.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            mode = os.fstat(fd).st_mode
            if stat.S_ISREG(mode):
                os.read(fd, 1)
        finally:
            os.close(fd)
    except OSError as exc:
        raise ConfigError(f"metrics.{key} {path}: cannot read: {exc.strerror or exc}") from None
    except ValueError:  # a NUL byte: the configuration refuses it, a caller may not
        raise ConfigError(f"metrics.{key} {path!r}: must not contain a NUL byte") from None
    if stat.S_ISDIR(mode):
        raise ConfigError(f"metrics.{key} {path}: cannot read: {os.strerror(errno.EISDIR)}")
    if not stat.S_ISREG(mode):
        raise ConfigError(f"metrics.{key} {path}: cannot read: not a regular file")


def server_context(settings: MetricsSettings) -> ssl.SSLContext | None:
    """The server's TLS context, or None when no certificate is configured.

    Raises:
        ConfigError: one line naming the setting and the file at fault.
    """
    cert, key = settings.tls_cert_file, settings.tls_key_file
    client_ca = settings.tls_client_ca_file
    if not (cert or key or client_ca):
        return None
    if not cert or not key:
        missing = "tls_key_file" if cert else "tls_cert_file"
        raise ConfigError(
            f"metrics.{missing} is empty: set both metrics.tls_cert_file and "
            "metrics.tls_key_file, or neither"
        )
    for name, path in (("tls_cert_file", cert), ("tls_key_file", key)):
        _require_readable(name, path)
    try:
        # Parses every certificate in the file, so a bad one is blamed on tls_cert_file
        # before load_cert_chain, whose errors cannot tell a bad cert from a bad key.
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=cert)
    except ssl.SSLError:
        raise ConfigError(f"metrics.tls_cert_file {cert}: no PEM certificate in it") from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = TLS_VERSIONS[settings.tls_min_version]
    try:
        context.load_cert_chain(cert, key, password=_no_passphrase)
    except _EncryptedKeyError:
        raise ConfigError(
            f"metrics.tls_key_file {key}: the key is encrypted; give the daemon an "
            "unencrypted key that only it can read"
        ) from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            problem = f"does not match the certificate in metrics.tls_cert_file {cert}"
        else:
            problem = "no PEM private key in it"
        raise ConfigError(f"metrics.tls_key_file {key}: {problem}") from None
    if os.stat(key).st_mode & 0o004:
        log.warning("tls_key_world_readable", path=key, fix=f"chmod o-r {key}")
    if client_ca:
        _require_readable("tls_client_ca_file", client_ca)
        try:
            context.load_verify_locations(cafile=client_ca)
        except ssl.SSLError:
            raise ConfigError(
                f"metrics.tls_client_ca_file {client_ca}: no PEM CA certificate in it"
            ) from None
        # exporter-toolkit's RequireAndVerifyClientCert: "optional" would let any client in.
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def load_bcrypt() -> ModuleType:
    """The ``bcrypt`` module.

    Raises:
        ConfigError: it is not installed (it is the optional ``auth`` extra).
    """
    try:
        import bcrypt
    except ImportError:
        raise ConfigError(
            "metrics.basic_auth needs the bcrypt package: pip install 'gpu-job-watchdog[auth]'"
        ) from None
    return bcrypt


class BasicAuth:
    """Checks ``Authorization: Basic`` headers against bcrypt hashes.

    As exporter-toolkit does: an unknown user is checked against a dummy hash of
    the same cost, so timing does not tell which users exist; bcrypt runs one
    check at a time, so a flood of wrong passwords costs at most one core; and
    verdicts are cached (keyed by a SHA-256 of user, hash and password, never
    the password itself), so a scraper's repeated login costs one dict lookup.
    bcrypt compares the hashes in constant time.

    Raises:
        ConfigError: ``bcrypt`` is not installed.
    """

    def __init__(self, users: tuple[BasicAuthUser, ...], bcrypt: Any = None) -> None:
        self._bcrypt = bcrypt if bcrypt is not None else load_bcrypt()
        self._hashes = {u.user: u.password_hash.encode() for u in users}
        cost = max((int(u.password_hash[4:6]) for u in users), default=10)
        self._dummy = self._bcrypt.hashpw(
            secrets.token_hex(16).encode(), self._bcrypt.gensalt(rounds=cost)
        )
        self._lock = threading.Lock()
        self._cache: dict[bytes, bool] = {}

    def check(self, header: str | None) -> bool:
        """True when ``header`` (the Authorization header, or None) names a user and password."""
        credentials = _parse_basic(header)
        if credentials is None:
            return False
        user, password = credentials
        stored = self._hashes.get(user)
        hashed = stored if stored is not None else self._dummy
        key = hashlib.sha256(b"\0".join((user.encode(), hashed, password))).digest()
        verdict = self._cache.get(key)
        if verdict is None:
            verdict = self._verify(password, hashed)
            with self._lock:
                if len(self._cache) >= CACHE_SIZE:
                    self._cache.pop(next(iter(self._cache)))
                self._cache[key] = verdict
        return verdict and stored is not None

    def _verify(self, password: bytes, hashed: bytes) -> bool:
        # Too long for bcrypt: still spend the time of a check, then refuse.
        too_long = len(password) > BCRYPT_MAX_PASSWORD_BYTES
        with self._lock:
            ok = bool(self._bcrypt.checkpw(password[:BCRYPT_MAX_PASSWORD_BYTES], hashed))
        return ok and not too_long


def _parse_basic(header: str | None) -> tuple[str, bytes] | None:
    """(user, password) from a basic auth header, or None if it is absent or malformed."""
    if header is None:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
        user, sep, password = decoded.partition(b":")
        return (user.decode("utf-8"), password) if sep else None
    except (binascii.Error, UnicodeDecodeError):
        return None
