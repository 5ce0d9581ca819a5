"""Server TLS credentials that follow their files, as cert-manager rotates them.

gRPC asks :class:`CertificateFiles` for the current certificate configuration before each
new TLS handshake (``grpc.dynamic_ssl_server_credentials``). It ``stat``-s the files and reads
them again only when one of them changed; connections already open keep the certificate they
shook hands with. A rotation caught half-written (a file missing, unreadable or not parsing
yet) keeps the previous configuration and is tried again on the next handshake.

The files are checked as OpenSSL reads them (:func:`check_files`) before gRPC gets them: gRPC
reports a bad certificate or key at start-up only as a failure to bind the address.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from pathlib import Path

import grpc

from coordinator.config import ConfigError, Problem

log = logging.getLogger("coordinator.tls")

_Signature = tuple[tuple[int, int, int], ...]
_SETTINGS = ("tls_cert_file", "tls_key_file", "tls_client_ca_file")


class _EncryptedKey(Exception):
    """The private key needs a password; gRPC takes none."""


def _no_password() -> bytes:
    raise _EncryptedKey


def _check_certificates(setting: str, path: Path, pem: bytes) -> None:
    text = pem.decode("ascii", "ignore")  # PEM blocks are ASCII; text around them is skipped
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=text)
    except ssl.SSLError:
        raise ConfigError(Problem(setting, f"{path} holds no PEM certificate (-----BEGIN"
                                  " CERTIFICATE-----)")) from None


def check_files(cert: Path, key: Path, client_ca: Path | None) -> None:
    """Checks that the files can be read and hold what their settings say: a PEM certificate
    chain, its unencrypted PEM private key, and PEM CA certificates.

    Raises:
        ConfigError: naming the setting of the first bad file.
    """
    paths = (cert, key) if client_ca is None else (cert, key, client_ca)
    for setting, path in zip(_SETTINGS, paths, strict=False):
        try:
            pem = path.read_bytes()
        except OSError as exc:
            raise ConfigError(Problem(setting, f"cannot read {path}: {exc}")) from None
        if not pem.strip():
            raise ConfigError(Problem(setting, f"{path} is empty"))
        if setting != "tls_key_file":
            _check_certificates(setting, path, pem)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key, password=_no_password)
    except _EncryptedKey:
        raise ConfigError(Problem("tls_key_file", f"{key} is encrypted: give the key without"
                                  " a password (protect the file instead)")) from None
    except ssl.SSLError as exc:
        reason = (f"{key} is not the private key of the certificate in {cert}"
                  if exc.reason == "KEY_VALUES_MISMATCH"
                  else f"{key} holds no PEM private key (-----BEGIN PRIVATE KEY-----)")
        raise ConfigError(Problem("tls_key_file", reason)) from None
    except OSError as exc:  # replaced since it was read above
        raise ConfigError(Problem("tls_key_file", f"cannot read {key}: {exc}")) from None


class CertificateFiles:
    """The certificate, key and optional client CA files of the server.

    Thread-safe: gRPC calls :meth:`fetch` from its own threads.
    """

    def __init__(self, cert: Path, key: Path, client_ca: Path | None) -> None:
        self._paths = (cert, key) if client_ca is None else (cert, key, client_ca)
        self._lock = threading.Lock()
        self._signature: _Signature = ()
        self.reloads = 0
        """How many times the files were read, the first time included."""

    def _stat(self) -> _Signature:
        return tuple((st.st_mtime_ns, st.st_size, st.st_ino)
                     for st in (os.stat(p) for p in self._paths))

    def _load(self) -> grpc.ServerCertificateConfiguration:
        cert, key, *ca = (p.read_bytes() for p in self._paths)
        return grpc.ssl_server_certificate_configuration(
            [(key, cert)], root_certificates=ca[0] if ca else None)

    def _check(self) -> None:
        cert, key, *ca = self._paths
        check_files(cert, key, ca[0] if ca else None)

    def initial(self) -> grpc.ServerCertificateConfiguration:
        """The configuration at start-up.

        Raises:
            ConfigError: a file cannot be read or does not parse (see :func:`check_files`);
                names its setting.
        """
        with self._lock:
            self._check()
            self._signature = self._stat()
            self.reloads += 1
            return self._load()

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """The new configuration if a file changed since the last read, else None."""
        with self._lock:
            try:
                signature = self._stat()
                if signature == self._signature:
                    return None
                self._check()
                config = self._load()
            except OSError as exc:
                log.warning("TLS files not readable, keeping the current certificate: %s", exc)
                return None
            except ConfigError as exc:  # caught half-written, or a bad rotation
                log.warning("keeping the current certificate: %s", exc)
                return None
            self._signature = signature
            self.reloads += 1
            log.info("TLS files changed: new connections get the new certificate")
            return config

    def credentials(self) -> grpc.ServerCredentials:
        """Server credentials that reload the files; client certificates are required when
        a client CA is given."""
        return grpc.dynamic_ssl_server_credentials(
            self.initial(), self.fetch,
            require_client_authentication=len(self._paths) == 3)
