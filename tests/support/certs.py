"""Certificates for TLS tests, made with trustme: the sidecar's files, and client credentials."""

from __future__ import annotations

from pathlib import Path

import grpc
import trustme


def write_server_files(ca: trustme.CA, directory: Path) -> None:
    """``tls.crt`` (with its chain) and ``tls.key`` for ``127.0.0.1`` and ``localhost``."""
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_pem.write_to_path(str(directory / "tls.key"))
    cert.cert_chain_pems[0].write_to_path(str(directory / "tls.crt"))
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(str(directory / "tls.crt"), append=True)


def tls_credentials(ca: trustme.CA, client: trustme.LeafCert | None = None
                    ) -> grpc.ChannelCredentials:
    """Channel credentials that trust ``ca``; with ``client``, for mutual TLS."""
    return grpc.ssl_channel_credentials(
        root_certificates=ca.cert_pem.bytes(),
        private_key=None if client is None else client.private_key_pem.bytes(),
        certificate_chain=None if client is None else client.cert_chain_pems[0].bytes())
