"""The one-line advice of ``lowwater status`` for each TLS handshake failure, against real gRPC
servers on port 0 (the handshake fails before any service is reached, so none is served).

The token and mTLS cases on a real ``lowwater serve`` are in
``tests/integration/test_admin_cli_security.py``.
"""

from __future__ import annotations

from concurrent import futures
from pathlib import Path

import grpc
import pytest
import trustme

from coordinator import cli

pytestmark = pytest.mark.timeout(60)


def _server(credentials: grpc.ServerCredentials | None) -> tuple[grpc.Server, str]:
    server = grpc.server(futures.ThreadPoolExecutor(2))
    address = "127.0.0.1:0"
    port = (server.add_insecure_port(address) if credentials is None
            else server.add_secure_port(address, credentials))
    server.start()
    return server, f"127.0.0.1:{port}"


@pytest.mark.parametrize(("server_side", "client_flags", "advice"), [
    ("plaintext", ["--tls-ca-file", "ca.crt"],
     "the sidecar does not use TLS: leave out the --tls-* flags"),
    ("tls for another name", ["--tls-ca-file", "ca.crt"],
     "the sidecar's certificate does not name the host of --target: use a name it carries"),
    ("mtls", ["--tls-ca-file", "ca.crt", "--tls-cert-file", "client.crt",
              "--tls-key-file", "client.key"],
     ("if the sidecar requires client certificates, pass one signed by its"
     " tls_client_ca_file")),
])
def test_a_failed_handshake_says_what_to_pass(
    server_side: str, client_flags: list[str], advice: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ca = trustme.CA()  # the client trusts it
    ca.cert_pem.write_to_path(str(tmp_path / "ca.crt"))
    client = trustme.CA().issue_cert("rogue")  # from a CA the servers do not trust
    client.private_key_pem.write_to_path(str(tmp_path / "client.key"))
    client.cert_chain_pems[0].write_to_path(str(tmp_path / "client.crt"))
    credentials = None
    if server_side != "plaintext":
        leaf = ca.issue_cert("elsewhere.test" if server_side.endswith("name") else "127.0.0.1")
        credentials = grpc.ssl_server_credentials(
            [(leaf.private_key_pem.bytes(), leaf.cert_chain_pems[0].bytes())],
            root_certificates=ca.cert_pem.bytes() if server_side == "mtls" else None,
            require_client_auth=server_side == "mtls")
    server, target = _server(credentials)
    try:
        argv = ["status", "--target", target, *(
            str(tmp_path / flag) if flag.endswith((".crt", ".key")) else flag for flag in client_flags)]
        assert cli.main(argv) == 1
    finally:
        server.stop(None)
    err = capsys.readouterr().err
    assert err.startswith(f"lowwater: cannot get the status of the sidecar at {target}:"
                          " UNAVAILABLE: "), err
    assert err.endswith(f"; {advice}\n"), err
