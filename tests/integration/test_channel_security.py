"""Channel security on a real ``lowwater serve``: tokens, TLS, mTLS, certificate reload, and
secrets (ours and librdkafka's) kept out of logs and GetStatus.

Certificates are made in the test with trustme; the clients are the SDK and raw gRPC.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

import grpc
import pytest
import trustme
from confluent_kafka import Producer
from cryptography import x509

import lowwater
from coordinator.embedded import SidecarProcess
from lowwater.v1 import admin_pb2, admin_pb2_grpc, coordinator_pb2_grpc
from lowwater.v1 import coordinator_pb2 as pb
from tests.support.broker import TopicFactory, unique_name
from tests.support.certs import tls_credentials, write_server_files

pytestmark = pytest.mark.timeout(180)

WORKER_TOKEN = "wkr-token-5d0c1e"
ADMIN_TOKEN = "adm-token-88f2a9"
KAFKA_SECRETS = {
    "sasl.password": "kafka-sasl-pw-31c7",
    "ssl.key.password": "kafka-key-pw-9b2e",
    "sasl.oauthbearer.config": "principal=kafka-oauth-secret-77aa",
}
"""Secret librdkafka properties (ignored with PLAINTEXT, so the broker still answers)."""
WAIT = 30.0


def _replace_server_files(ca: trustme.CA, directory: Path) -> None:
    """As cert-manager does: new files, each swapped in by rename."""
    staging = directory / "staging"
    staging.mkdir(exist_ok=True)
    write_server_files(ca, staging)
    for name in ("tls.crt", "tls.key"):
        os.replace(staging / name, directory / name)


def _peer_serial(target: str, ca: trustme.CA) -> int:
    """The serial number of the certificate the sidecar presents to a new connection."""
    import socket
    import ssl

    host, _, port = target.rpartition(":")
    context = ssl.create_default_context()
    ca.configure_trust(context)
    context.set_alpn_protocols(["h2"])
    with socket.create_connection((host, int(port)), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=host) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def _pull(channel: grpc.Channel, token: str | None) -> pb.PullResponse:
    metadata = None if token is None else [("authorization", f"Bearer {token}")]
    resp: pb.PullResponse = coordinator_pb2_grpc.CoordinatorStub(channel).Pull(
        pb.PullRequest(max_messages=1), metadata=metadata, timeout=10)
    return resp


def _code(fn: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    code: grpc.StatusCode = info.value.code()
    return code


async def _sdk_consumes(target: str, topic_count: int, **options: object) -> int:
    """Runs an SDK worker until it has handled ``topic_count`` records; returns the count."""
    seen: list[bytes | None] = []
    done = asyncio.Event()

    async def handle(msg: lowwater.Message) -> None:
        seen.append(msg.value)
        if len(seen) >= topic_count:
            done.set()

    async with lowwater.AsyncWorker(target, handle, **options):  # type: ignore[arg-type]
        await asyncio.wait_for(done.wait(), WAIT)
    return len(seen)


def test_tokens_and_mutual_tls_on_a_real_sidecar(
    kafka_bootstrap: str, new_topic: TopicFactory, tmp_path: Path
) -> None:
    ca, rogue = trustme.CA(), trustme.CA()
    write_server_files(ca, tmp_path)
    client = ca.issue_cert("worker.lowwater.test")
    client.private_key_pem.write_to_path(str(tmp_path / "client.key"))
    client.cert_chain_pems[0].write_to_path(str(tmp_path / "client.crt"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.crt"))
    (tmp_path / "worker.token").write_text(WORKER_TOKEN + "\n")
    topic = new_topic(1)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(3):
        producer.produce(topic, f"r{i}".encode())
    assert producer.flush(10) == 0

    sidecar = SidecarProcess(
        kafka_bootstrap, unique_name("g"), [topic],
        extra=["--tls-cert-file", str(tmp_path / "tls.crt"),
               "--tls-key-file", str(tmp_path / "tls.key"),
               "--tls-client-ca-file", str(tmp_path / "ca.crt"),
               "--token-file", str(tmp_path / "worker.token"),
               "--admin-token-env", "LW_TEST_ADMIN_TOKEN_VAR", "--log-level", "DEBUG"],
        env={"LW_TEST_ADMIN_TOKEN_VAR": ADMIN_TOKEN},
        credentials=tls_credentials(ca, client), admin_token=ADMIN_TOKEN)
    with sidecar:
        target = sidecar.target
        sidecar.wait_assigned(1)
        # mTLS: a client without a certificate, or with one from another CA, is refused.
        for credentials in (tls_credentials(ca), tls_credentials(ca, rogue.issue_cert("x"))):
            with grpc.secure_channel(target, credentials) as channel:
                assert _code(partial(_pull, channel, WORKER_TOKEN)) \
                    == grpc.StatusCode.UNAVAILABLE
        with grpc.insecure_channel(target) as channel:  # plaintext to a TLS port
            assert _code(lambda: _pull(channel, WORKER_TOKEN)) == grpc.StatusCode.UNAVAILABLE
        with grpc.secure_channel(target, tls_credentials(ca, client)) as channel:
            # Tokens: none, a wrong one and the Admin one are refused on the worker API ...
            for token in (None, "wrong", ADMIN_TOKEN):
                assert _code(partial(_pull, channel, token)) \
                    == grpc.StatusCode.UNAUTHENTICATED
            # ... and the workers' one on the Admin API.
            admin = admin_pb2_grpc.AdminStub(channel)
            for token in (None, WORKER_TOKEN):
                metadata = None if token is None else [("authorization", f"Bearer {token}")]
                assert _code(partial(admin.GetStatus, admin_pb2.GetStatusRequest(),
                                     metadata=metadata, timeout=5)) \
                    == grpc.StatusCode.UNAUTHENTICATED
            paused = admin.PausePartitions(admin_pb2.PausePartitionsRequest(
                partitions=[admin_pb2.PartitionRef(topic=topic, partition=0)]),
                metadata=sidecar.admin_metadata, timeout=5)
            assert list(paused.not_assigned) == []
            admin.ResumePartitions(admin_pb2.ResumePartitionsRequest(
                partitions=[admin_pb2.PartitionRef(topic=topic, partition=0)]),
                metadata=sidecar.admin_metadata, timeout=5)
        # The right token works through the SDK, over mTLS, token from a file.
        assert asyncio.run(_sdk_consumes(
            target, 3, token_file=tmp_path / "worker.token", tls_ca_file=tmp_path / "ca.crt",
            tls_cert_file=tmp_path / "client.crt", tls_key_file=tmp_path / "client.key")) == 3
        status = sidecar.status()
        assert sidecar.stop() == 0
    log = sidecar.log_path.read_text()
    for secret in (WORKER_TOKEN, ADMIN_TOKEN):
        assert secret not in log
        assert secret not in str(status)
    assert "(mTLS; worker API token; Admin API token, mutating calls allowed)" in log
    assert "refused worker call Pull: missing token" in log


def test_certificates_are_reloaded_without_a_restart(
    kafka_bootstrap: str, new_topic: TopicFactory, tmp_path: Path
) -> None:
    ca = trustme.CA()
    write_server_files(ca, tmp_path)
    sidecar = SidecarProcess(
        kafka_bootstrap, unique_name("g"), [new_topic(1)],
        extra=["--tls-cert-file", str(tmp_path / "tls.crt"),
               "--tls-key-file", str(tmp_path / "tls.key")],
        credentials=tls_credentials(ca))
    with sidecar:
        first = _peer_serial(sidecar.target, ca)
        assert _peer_serial(sidecar.target, ca) == first  # unchanged files: same certificate
        with grpc.secure_channel(sidecar.target, tls_credentials(ca)) as old:
            assert _pull(old, None) == pb.PullResponse()
            _replace_server_files(ca, tmp_path)
            second = _peer_serial(sidecar.target, ca)
            assert second != first
            assert _pull(old, None) == pb.PullResponse()  # the open connection goes on
        # A certificate from a new CA: clients that trust only the new CA get in.
        new_ca = trustme.CA()
        _replace_server_files(new_ca, tmp_path)
        with grpc.secure_channel(sidecar.target, tls_credentials(new_ca)) as channel:
            assert _pull(channel, None) == pb.PullResponse()
        assert sidecar.stop() == 0
    assert "TLS files changed" in sidecar.log_path.read_text()


def test_kafka_and_api_secrets_never_reach_the_logs_or_get_status(
    kafka_bootstrap: str, new_topic: TopicFactory, tmp_path: Path
) -> None:
    (tmp_path / "admin.token").write_text(ADMIN_TOKEN)
    key_pem = trustme.CA().issue_cert("kafka-client").private_key_pem.bytes().decode()
    secrets = {**KAFKA_SECRETS, "ssl.key.pem": key_pem}
    env = {f"LOWWATER_KAFKA__{key.upper().replace('.', '_')}": value
           for key, value in secrets.items()}
    sidecar = SidecarProcess(
        kafka_bootstrap, unique_name("g"), [new_topic(1)],
        extra=["--log-level", "DEBUG", "--admin-token-file", str(tmp_path / "admin.token"),
               "--token-env", "LW_TEST_WORKER_TOKEN_VAR",
               "--kafka", "sasl.username=lowwater-user", "--kafka", "debug=conf,security"],
        env={**env, "LW_TEST_WORKER_TOKEN_VAR": WORKER_TOKEN}, admin_token=ADMIN_TOKEN)
    with sidecar:
        sidecar.wait_assigned(1)
        status = str(sidecar.status())
        assert sidecar.stop() == 0
    log = sidecar.log_path.read_text()
    assert "settings: Settings(" in log  # the DEBUG dump of the settings did happen
    assert "'sasl.password': '***'" in log
    assert "lowwater-user" in log  # not a secret: the dump shows the passthrough
    assert "sasl.password = [redacted]" in log  # librdkafka's own dump (debug=conf) happened
    key_body = key_pem.splitlines()[1]  # a line of base64 from inside the key
    for secret in (*KAFKA_SECRETS.values(), key_body, WORKER_TOKEN, ADMIN_TOKEN):
        assert secret not in log, secret
        assert secret not in status, secret
