"""Channel security for clients of a sidecar: a bearer token and TLS files, checked once and
turned into gRPC channel credentials and call metadata.

The workers' options (``token``, ``token_file``, ``token_env``, ``tls_*``) are built with
:func:`channel_security`, and so are the flags of the sidecar's operator commands
(``lowwater status --token-file PATH --tls-ca-file PATH``). Each caller says how its options
are spelled, so that an error names what the user wrote.

Example::

    security = channel_security(token_file="/etc/lowwater/admin-token/token",
                                tls_ca_file="/etc/lowwater/tls/ca.crt")
    with security.channel("sidecar:50051") as channel:
        AdminStub(channel).GetStatus(GetStatusRequest(), metadata=security.call_metadata())
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ChannelSecurity", "TlsFiles", "TokenSource", "channel_security"]


@dataclass(frozen=True, slots=True)
class TokenSource:
    """The bearer token: a value, or a file read again at each connection (rotation)."""

    value: str | None = None
    file: Path | None = None
    name: str = "token_file"
    """How the option that named :attr:`file` is spelled, for errors."""

    def current(self) -> str:
        """The token now; raises OSError or ValueError if its file cannot give one."""
        if self.file is None:
            return self.value or ""
        token = self.file.read_text().strip()
        if not token:
            raise ValueError(f"{self.name} {self.file} is empty")
        return token

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The call metadata that carries the token."""
        return (("authorization", f"Bearer {self.current()}"),)


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files for TLS: the CA bundle that signs the sidecar's certificate, and for mTLS
    the client's own certificate and key. Read when the client connects."""

    ca: Path | None
    cert: Path | None
    key: Path | None

    def credentials(self) -> Any:
        """``grpc.ssl_channel_credentials`` from the files as they are now."""
        import grpc

        def read(path: Path | None) -> bytes | None:
            return None if path is None else path.read_bytes()

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca), private_key=read(self.key),
            certificate_chain=read(self.cert))


@dataclass(frozen=True, slots=True)
class ChannelSecurity:
    """What a client sends: a token (None: none) over TLS (None: plaintext)."""

    token: TokenSource | None = None
    tls: TlsFiles | None = None

    def channel_credentials(self) -> Any:
        """``grpc.ChannelCredentials`` for TLS, or None for plaintext."""
        return None if self.tls is None else self.tls.credentials()

    def call_metadata(self) -> tuple[tuple[str, str], ...] | None:
        """Metadata for every call: the bearer token, if any (a token file is read now)."""
        return None if self.token is None else self.token.metadata()

    def channel(self, target: str, options: Sequence[tuple[str, Any]] = ()) -> Any:
        """A blocking ``grpc.Channel`` to ``target``: secure with TLS, else plaintext."""
        import grpc

        credentials = self.channel_credentials()
        if credentials is None:
            return grpc.insecure_channel(target, options=options)
        return grpc.secure_channel(target, credentials, options=options)


def _as_is(option: str) -> str:
    return option


def channel_security(
    *,
    token: object = None,
    token_file: object = None,
    token_env: object = None,
    tls_ca_file: object = None,
    tls_cert_file: object = None,
    tls_key_file: object = None,
    spell: Callable[[str], str] = _as_is,
) -> ChannelSecurity:
    """Checks the token and TLS options and reads the token (a token file is read now too,
    so that it fails here rather than at the first connection).

    Args:
        token: the token itself.
        token_file: a file holding the token; read again at each connection.
        token_env: the name of an environment variable holding the token.
        tls_ca_file: PEM CA bundle that signs the sidecar's certificate: turns TLS on.
        tls_cert_file: PEM client certificate, for mutual TLS; needs ``tls_key_file``.
        tls_key_file: PEM private key of ``tls_cert_file``.
        spell: how errors spell an option, given its name above (``"token_file"``); the CLI
            passes one that gives ``--token-file``.

    Raises:
        TypeError: an option has the wrong type; the message names it.
        ValueError: an option is empty, unreadable or missing its pair; the message names it.
    """
    tls = TlsFiles(_readable(spell("tls_ca_file"), tls_ca_file),
                   _readable(spell("tls_cert_file"), tls_cert_file),
                   _readable(spell("tls_key_file"), tls_key_file))
    if (tls.cert is None) != (tls.key is None):
        raise ValueError(f"{spell('tls_cert_file')} and {spell('tls_key_file')} go together"
                         " (mutual TLS)")
    return ChannelSecurity(token=_token(token, token_file, token_env, spell),
                           tls=None if tls == TlsFiles(None, None, None) else tls)


def _readable(name: str, value: object) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, str | os.PathLike):
        raise TypeError(f"{name} must be a path, got {type(value).__name__}")
    path = Path(value)
    if not path.is_file():
        raise ValueError(f"{name}: {path} is not a readable file")
    return path


def _token(token: object, token_file: object, token_env: object,
           spell: Callable[[str], str]) -> TokenSource | None:
    given = [spell(n) for n, v in (("token", token), ("token_file", token_file),
                                   ("token_env", token_env)) if v is not None]
    if len(given) > 1:
        names = ", ".join(spell(n) for n in ("token", "token_file")) + f" and {spell('token_env')}"
        raise ValueError(f"give one of {names}, not {' and '.join(given)}")
    if token is not None:
        if not isinstance(token, str):
            raise TypeError(f"{spell('token')} must be a str, got {type(token).__name__}")
        if not token.strip():
            raise ValueError(f"{spell('token')} must not be empty")
        return TokenSource(value=token.strip())
    if token_env is not None:
        if not isinstance(token_env, str):
            raise TypeError(f"{spell('token_env')} must be a str, got {type(token_env).__name__}")
        value = os.environ.get(token_env, "").strip()
        if not value:
            raise ValueError(f"{spell('token_env')}: ${token_env} is not set or empty")
        return TokenSource(value=value)
    path = _readable(spell("token_file"), token_file)
    if path is None:
        return None
    source = TokenSource(file=path, name=spell("token_file"))
    source.current()  # fails now, with its name, rather than at the first connection
    return source
