"""``lowwater status`` and ``lowwater top``, run as an operator runs them, against a real
``lowwater serve`` with an Admin token and TLS, then mutual TLS (trustme certificates).

Each test starts one sidecar and runs every command against it; a refusal must exit 1 with
one line that says what to pass.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import trustme

from coordinator.embedded import SidecarProcess
from tests.integration.test_channel_security import ADMIN_TOKEN, WORKER_TOKEN
from tests.integration.workload import logs_on_failure
from tests.support.broker import TopicFactory, unique_name
from tests.support.certs import tls_credentials, write_server_files

pytestmark = pytest.mark.timeout(120)

GRPC_CORE_LOG = re.compile(r"[IWE]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\] ")
"""A line of gRPC core's own log (``I1126 12:02:31.015947  8822 ssl_transport_security.cc:...``)."""


def lowwater(*argv: str | Path, env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess[str]:
    """``lowwater ARGV`` in a clean environment (plus ``env``), as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "coordinator", *map(str, argv)], capture_output=True, text=True,
        timeout=60, check=False, env={"COLUMNS": "160", "PATH": "/usr/bin:/bin", **(env or {})})


def server_pki(directory: Path) -> tuple[trustme.CA, list[str]]:
    """A CA (also in ``ca.crt``) and the sidecar's flags for a certificate it signed."""
    ca = trustme.CA()
    write_server_files(ca, directory)
    ca.cert_pem.write_to_path(str(directory / "ca.crt"))
    return ca, ["--tls-cert-file", str(directory / "tls.crt"),
                "--tls-key-file", str(directory / "tls.key")]


def refused(out: subprocess.CompletedProcess[str], target: str) -> str:
    """The one-line message of a command that exited 1. gRPC core may log a failed TLS
    handshake above it, at INFO (``GRPC_VERBOSITY=ERROR`` hides that); ours is the last line,
    and the only one of ours."""
    assert out.returncode == 1, out.stdout + out.stderr
    ours = [line for line in out.stderr.splitlines() if not GRPC_CORE_LOG.match(line)]
    assert len(ours) == 1 and out.stderr.endswith(ours[0] + "\n"), out.stderr
    assert ours[0].startswith(f"lowwater: cannot get the status of the sidecar at {target}: ")
    return ours[0] + "\n"


def test_status_and_top_with_the_admin_token_over_tls(
    kafka_bootstrap: str, new_topic: TopicFactory, tmp_path: Path
) -> None:
    ca, server_tls = server_pki(tmp_path)
    (tmp_path / "admin.token").write_text(ADMIN_TOKEN + "\n")
    (tmp_path / "worker.token").write_text(WORKER_TOKEN + "\n")
    topic = new_topic(1)
    sidecar = SidecarProcess(
        kafka_bootstrap, unique_name("g"), [topic],
        extra=[*server_tls, "--admin-token-file", str(tmp_path / "admin.token"),
               "--token-file", str(tmp_path / "worker.token")],
        credentials=tls_credentials(ca), admin_token=ADMIN_TOKEN)
    tls: list[str | Path] = ["--tls-ca-file", tmp_path / "ca.crt"]
    with sidecar, logs_on_failure(sidecar):
        target = sidecar.target
        out = lowwater("status", "--target", target, "--token-file", tmp_path / "admin.token",
                       *tls)
        assert out.returncode == 0, out.stderr
        assert f"group {sidecar.group}: SERVING" in out.stdout
        top = lowwater("top", "--target", target, "--token-file", tmp_path / "admin.token",
                       *tls, "--iterations", "1", "--interval", "0.2")
        assert top.returncode == 0, top.stderr
        assert "commits/s" in top.stdout

        err = refused(lowwater("status", "--target", target, *tls), target)
        assert "UNAUTHENTICATED: the admin API needs a valid token" in err
        assert err.endswith("; pass the Admin token with --token-file PATH or --token-env"
                            " VARIABLE\n")
        err = refused(lowwater("top", "--target", target, *tls,
                               "--token-file", tmp_path / "worker.token"), target)
        assert "UNAUTHENTICATED" in err and "refused this token" in err

        err = refused(lowwater("status", "--target", target,
                               "--token-file", tmp_path / "admin.token"), target)
        assert err.endswith("; if the sidecar uses TLS, pass --tls-ca-file PATH\n")
        other_ca = tmp_path / "other-ca.crt"
        trustme.CA().cert_pem.write_to_path(str(other_ca))
        err = refused(lowwater("status", "--target", target, "--token-file",
                               tmp_path / "admin.token", "--tls-ca-file", other_ca), target)
        assert "CERTIFICATE_VERIFY_FAILED" in err
        assert "pass --tls-ca-file with the CA that signed the sidecar's certificate" in err
        assert sidecar.stop() == 0
    log = sidecar.log_path.read_text()
    assert "refused admin call GetStatus: missing token" in log
    assert ADMIN_TOKEN not in log


def test_status_over_mutual_tls(
    kafka_bootstrap: str, new_topic: TopicFactory, tmp_path: Path
) -> None:
    ca, server_tls = server_pki(tmp_path)
    client = ca.issue_cert("operator.lowwater.test")
    client.private_key_pem.write_to_path(str(tmp_path / "client.key"))
    client.cert_chain_pems[0].write_to_path(str(tmp_path / "client.crt"))
    sidecar = SidecarProcess(
        kafka_bootstrap, unique_name("g"), [new_topic(1)],
        extra=[*server_tls, "--tls-client-ca-file", str(tmp_path / "ca.crt"),
               "--admin-token-env", "LW_TEST_ADMIN_TOKEN_VAR"],
        env={"LW_TEST_ADMIN_TOKEN_VAR": ADMIN_TOKEN},
        credentials=tls_credentials(ca, client), admin_token=ADMIN_TOKEN)
    with sidecar, logs_on_failure(sidecar):
        target = sidecar.target
        mtls: list[str | Path] = ["--tls-ca-file", tmp_path / "ca.crt", "--tls-cert-file", tmp_path / "client.crt",
                "--tls-key-file", tmp_path / "client.key"]
        out = lowwater("status", "--target", target, "--token-env", "LW_TEST_OPERATOR_TOKEN",
                       *mtls, env={"LW_TEST_OPERATOR_TOKEN": ADMIN_TOKEN})
        assert out.returncode == 0, out.stderr
        assert f"group {sidecar.group}: SERVING" in out.stdout

        err = refused(lowwater("status", "--target", target, "--tls-ca-file",
                               tmp_path / "ca.crt"), target)
        assert err.endswith("; if the sidecar requires client certificates"
                            " (tls_client_ca_file), pass --tls-cert-file and --tls-key-file\n")
        assert sidecar.stop() == 0
