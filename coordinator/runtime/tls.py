"""Server TLS credentials that follow their files, as cert-manager rotates them.

gRPC asks :class:`CertificateFiles` for the current certificate configuration before each
new TLS handshake (``grpc.dynamic_ssl_server_credentials``). It ``stat``-s the files and reads
them again only when one of them changed; connections already open keep the certificate they
shook hands with. A rotation caught half-written (a file missing or unreadable) keeps the
previous configuration and is tried again on the next handshake.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import grpc

from coordinator.config import ConfigError, Problem

log = logging.getLogger("coordinator.tls")

_Signature = tuple[tuple[int, int, int], ...]


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

    def initial(self) -> grpc.ServerCertificateConfiguration:
        """The configuration at start-up.

        Raises:
            ConfigError: a file cannot be read; names its setting.
        """
        with self._lock:
            names = ("tls_cert_file", "tls_key_file", "tls_client_ca_file")
            for name, path in zip(names, self._paths, strict=False):
                try:
                    if not path.read_bytes().strip():
                        raise ConfigError(Problem(name, f"{path} is empty"))
                except OSError as exc:
                    raise ConfigError(Problem(name, f"cannot read {path}: {exc}")) from None
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
                config = self._load()
            except OSError as exc:
                log.warning("TLS files not readable, keeping the current certificate: %s", exc)
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
