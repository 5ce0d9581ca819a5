"""How the operator commands (``lowwater status``, ``lowwater top``) reach a running sidecar's
Admin API when it has an Admin token or TLS: the flags, the checked
:class:`lowwater.security.ChannelSecurity` they make, and a one-line hint when the sidecar
refuses the call or the TLS handshake.

The token is never a flag (it would show in ``ps`` and in shell history): ``--token-file
PATH`` or ``--token-env VARIABLE``. Without either, the sidecar's own settings variables
``LOWWATER_ADMIN_TOKEN_FILE`` and ``LOWWATER_ADMIN_TOKEN_ENV`` are used when set, so the
commands work unchanged inside the sidecar's container. There is no ``LOWWATER_ADMIN_TOKEN``:
it would read as a setting, and token values are never settings.
"""

from __future__ import annotations

import argparse
import os
from typing import Final

import grpc

from coordinator.config import env_var_for
from lowwater.security import ChannelSecurity, channel_security

__all__ = ["OptionError", "add_arguments", "explain", "security_from_args"]

TOKEN_FILE_ENV: Final = env_var_for("admin_token_file")
"""The sidecar's ``admin_token_file`` variable: the default of ``--token-file``."""
TOKEN_ENV_ENV: Final = env_var_for("admin_token_env")
"""The sidecar's ``admin_token_env`` variable: the default of ``--token-env``."""
TOKEN_ADVICE: Final = "pass the Admin token with --token-file PATH or --token-env VARIABLE"


class OptionError(ValueError):
    """A security flag is unusable; ``str()`` names the flag (exit code 2)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the token and TLS flags (``dest`` is the SDK option name: ``token_file``...)."""
    group = parser.add_argument_group(
        "security", "For a sidecar with an Admin token (admin_token_file, admin_token_env) or"
                    " TLS (tls_cert_file, tls_client_ca_file). See docs/operations.md.")
    token = group.add_mutually_exclusive_group()
    token.add_argument(
        "--token-file", metavar="PATH",
        help=f"file holding the sidecar's Admin token (default: ${TOKEN_FILE_ENV}, the"
             f" sidecar's admin_token_file)")
    token.add_argument(
        "--token-env", metavar="VARIABLE",
        help=f"name of the environment variable holding the Admin token (default:"
             f" ${TOKEN_ENV_ENV}, the sidecar's admin_token_env)")
    group.add_argument("--tls-ca-file", metavar="PATH",
                       help="PEM CA bundle that signed the sidecar's certificate: connect with TLS")
    group.add_argument("--tls-cert-file", metavar="PATH",
                       help="PEM client certificate, for a sidecar with tls_client_ca_file (mTLS)")
    group.add_argument("--tls-key-file", metavar="PATH",
                       help="PEM private key of --tls-cert-file")


def _flag(option: str) -> str:
    return "--" + option.replace("_", "-")


def security_from_args(args: argparse.Namespace) -> ChannelSecurity:
    """The checked security of the flags of :func:`add_arguments` (a token file is read now).

    Raises:
        OptionError: a file is missing, a variable empty, or a certificate lacks its key; the
            message names the flag (or the variable it defaulted to).
    """
    environ = os.environ
    token_file, token_env = args.token_file, args.token_env
    spelled: dict[str, str] = {}
    if token_file is None and token_env is None:
        if environ.get(TOKEN_FILE_ENV, "").strip():
            token_file = environ[TOKEN_FILE_ENV].strip()
            spelled["token_file"] = f"--token-file (from ${TOKEN_FILE_ENV})"
        elif environ.get(TOKEN_ENV_ENV, "").strip():
            token_env = environ[TOKEN_ENV_ENV].strip()
            spelled["token_env"] = f"--token-env (from ${TOKEN_ENV_ENV})"
    try:
        return channel_security(
            token_file=token_file, token_env=token_env, tls_ca_file=args.tls_ca_file,
            tls_cert_file=args.tls_cert_file, tls_key_file=args.tls_key_file,
            spell=lambda option: spelled.get(option) or _flag(option))
    except (OSError, ValueError) as exc:
        raise OptionError(str(exc)) from None


def explain(exc: grpc.RpcError, security: ChannelSecurity) -> str:
    """One line for a failed Admin call: the status, its details, and what to pass when the
    sidecar refused the token or the TLS handshake failed."""
    if not isinstance(exc, grpc.Call):
        return str(exc)
    code, details = exc.code(), exc.details() or ""
    line = f"{code.name}: {details}"
    advice = _advice(code, details, security)
    return line if advice is None else f"{line}; {advice}"


def _advice(code: grpc.StatusCode, details: str, security: ChannelSecurity) -> str | None:
    tls = security.tls
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        if security.token is None:
            return TOKEN_ADVICE
        return "the sidecar refused this token: pass its Admin token (admin_token_file), not" \
            " the workers' one"
    if code is not grpc.StatusCode.UNAVAILABLE:
        return None
    if "WRONG_VERSION_NUMBER" in details:
        return "the sidecar does not use TLS: leave out the --tls-* flags"
    if "CERTIFICATE_VERIFY_FAILED" in details:
        return "pass --tls-ca-file with the CA that signed the sidecar's certificate"
    if "Hostname Verification" in details:
        return "the sidecar's certificate does not name the host of --target: use a name it" \
            " carries"
    if "Socket closed" in details or "Connection reset" in details:
        if tls is None:
            return "if the sidecar uses TLS, pass --tls-ca-file PATH"
        if tls.cert is None:
            return "if the sidecar requires client certificates (tls_client_ca_file), pass" \
                " --tls-cert-file and --tls-key-file"
        return "if the sidecar requires client certificates, pass one signed by its" \
            " tls_client_ca_file"
    return None
