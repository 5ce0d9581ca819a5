"""``lowwater serve`` as an operator sees it: health, logs and exit codes."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient
from grpc_health.v1 import health_pb2

import lowwater
from coordinator.embedded import SidecarProcess, TansuBroker, create_topic, pick_free_port
from coordinator.embedded.tansu import NO_AUTO_CREATE
from tests.support.broker import TopicFactory, id_records, produce, unique_name

HEALTH_TIMEOUT_S = 30.0
"""Seconds for a log line or a result to show up."""


@pytest.mark.parametrize("extra", [[], ["--dead-letter-topic", "t.dlq", "--create-topics"]],
                         ids=["no hand-off topics", "hand-off topics checked once it answers"])
def test_an_unreachable_broker_is_retried_and_reported(tansu_bin: str, extra: list[str]) -> None:
    port = pick_free_port()  # nothing listens here yet
    sidecar = SidecarProcess(f"127.0.0.1:{port}", "g", ["t"], extra=extra).start(
        wait_serving=False)
    try:
        sidecar.wait_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        deadline = time.monotonic() + HEALTH_TIMEOUT_S
        while "NOT_SERVING (cannot reach the broker" not in sidecar.log():
            assert time.monotonic() < deadline, sidecar.log()
            time.sleep(0.1)
        with TansuBroker(binary=tansu_bin, port=port):
            sidecar.wait_serving()
            assert "health: SERVING" in sidecar.log()
            if extra:
                assert "created hand-off topic t.dlq" in sidecar.log()
            assert sidecar.stop() == 0, sidecar.log()
    finally:
        sidecar.kill()


@pytest.mark.parametrize(("args", "message"), [
    (["--lease", "soon"], "invalid setting 'lease'"),
    (["--kafka", "fetch.wait.max.ms=soon"],  # librdkafka's own check, at start-up
     "invalid setting 'kafka': Invalid value for configuration property \"fetch.wait.max.ms\""),
    (["--kafka", "no.such.property=1"], "No such configuration property: \"no.such.property\""),
    (["--token-env", "LOWWATER_TEST_NO_SUCH_VARIABLE"],  # read when the sidecar starts
     "invalid setting 'token_env': $LOWWATER_TEST_NO_SUCH_VARIABLE is not set or empty"),
])
def test_a_bad_setting_exits_2_naming_it(args: list[str], message: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "coordinator", "serve", "--bootstrap-servers", "127.0.0.1:1",
         "--group", "g", "--topic", "t", "--listen", "127.0.0.1:0", *args],
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr


def test_a_remote_listen_without_tls_is_warned_about(tmp_path: Path) -> None:
    log_path = tmp_path / "sidecar.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "coordinator", "serve", "--bootstrap-servers", "127.0.0.1:1",
             "--group", "g", "--topic", "t", "--listen", "0.0.0.0:0", "--allow-remote-listen"],
            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + HEALTH_TIMEOUT_S
        while "serving on 0.0.0.0:0 without TLS" not in log_path.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
    finally:
        proc.kill()
        proc.wait(HEALTH_TIMEOUT_S)


def test_a_taken_address_exits_1_naming_it(tansu_bin: str) -> None:
    with TansuBroker(binary=tansu_bin) as broker, \
            SidecarProcess(broker.bootstrap_servers, "g", ["t"]) as first:
        done = subprocess.run(
            [sys.executable, "-m", "coordinator", "serve", "--bootstrap-servers",
             broker.bootstrap_servers, "--group", "g", "--topic", "t", "--listen", first.target],
            capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert f"cannot listen on {first.target}" in done.stdout + done.stderr


def test_workers_reach_the_sidecar_over_a_unix_socket(
    tansu_bin: str, tmp_path: Path
) -> None:
    path = str(tmp_path / "lowwater.sock")
    with TansuBroker(binary=tansu_bin) as broker:
        create_topic(broker.bootstrap_servers, "t", 1)
        produce(broker.bootstrap_servers, "t", id_records(20))
        with SidecarProcess(broker.bootstrap_servers, "g", ["t"], socket_path=path) as sidecar:
            assert stat.S_ISSOCK(os.stat(path).st_mode)
            got: list[bytes] = []

            def handle(msg: lowwater.Message) -> None:
                got.append(msg.value)

            with lowwater.Worker(sidecar.target, handle, max_in_flight=5):
                deadline = time.monotonic() + HEALTH_TIMEOUT_S
                while len(got) < 20:
                    assert time.monotonic() < deadline, sidecar.log()
                    time.sleep(0.05)
            assert sidecar.stop() == 0
        assert not os.path.exists(path)  # removed on shutdown
    assert sorted(got) == sorted(r.value or b"" for r in id_records(20))


def test_a_missing_topic_is_waited_for_and_consumed_once_created(tansu_bin: str) -> None:
    """The documented behaviour (docs/operations.md): a warning naming the topic, health
    unaffected (SERVING), no topic created by the sidecar, and consumption once it exists."""
    topic = "created-later"
    with TansuBroker(binary=tansu_bin) as broker, \
            SidecarProcess(broker.bootstrap_servers, "g", [topic]) as sidecar:  # SERVING
        deadline = time.monotonic() + HEALTH_TIMEOUT_S
        while f"Subscribed topic not available: {topic}" not in sidecar.log():
            assert time.monotonic() < deadline, sidecar.log()
            time.sleep(0.1)
        assert "waiting for it to be created" in sidecar.log()
        sidecar.wait_serving(timeout=1.0)  # still SERVING after the warning
        admin = AdminClient({"bootstrap.servers": broker.bootstrap_servers, **NO_AUTO_CREATE})
        assert topic not in admin.list_topics(timeout=10).topics  # the sidecar created nothing
        create_topic(broker.bootstrap_servers, topic, 1)
        produce(broker.bootstrap_servers, topic, id_records(10))
        got: list[bytes] = []

        def handle(msg: lowwater.Message) -> None:
            got.append(msg.value)

        with lowwater.Worker(sidecar.target, handle, max_in_flight=5):
            deadline = time.monotonic() + HEALTH_TIMEOUT_S
            while len(got) < 10:
                assert time.monotonic() < deadline, sidecar.log()
                time.sleep(0.05)
        assert sidecar.stop() == 0, sidecar.log()
    assert sorted(got) == sorted(r.value or b"" for r in id_records(10))


@pytest.mark.parametrize("kind", ["dead_letter", "retry"])
def test_a_missing_hand_off_topic_exits_1_naming_it_unless_created(
    kind: str, kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    """Without the topic, the sidecar exits 1 before it subscribes: it never reports SERVING
    and fetches nothing. With create_topics, it creates the topic and then consumes."""
    topic = new_topic(1)
    if kind == "dead_letter":
        handoff = unique_name("dlq")
        flags = ["--dead-letter-topic", handoff]
    else:
        handoff = f"{topic}.retry.1s"
        flags = ["--retry", "1s"]
    missing = SidecarProcess(kafka_bootstrap, unique_name("g"), [topic],
                             extra=flags).start(wait_serving=False)
    try:
        assert missing.proc is not None
        assert missing.proc.wait(HEALTH_TIMEOUT_S) == 1, missing.log()
        log = missing.log()
        assert f"hand-off topic(s) {handoff} do not exist" in log
        assert "health: SERVING" not in log and "; subscribing" not in log, log
    finally:
        missing.kill()
    produce(kafka_bootstrap, topic, id_records(3))
    got: list[bytes] = []

    def handle(msg: lowwater.Message) -> None:
        got.append(msg.value)

    with SidecarProcess(kafka_bootstrap, unique_name("g"), [topic],
                        extra=[*flags, "--create-topics"]) as created:
        assert f"created hand-off topic {handoff}" in created.log()  # before SERVING
        with lowwater.Worker(created.target, handle, max_in_flight=5):
            deadline = time.monotonic() + HEALTH_TIMEOUT_S
            while len(got) < 3:
                assert time.monotonic() < deadline, created.log()
                time.sleep(0.05)
        assert created.stop() == 0, created.log()
    assert sorted(got) == sorted(r.value or b"" for r in id_records(3))
    listed = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=10).topics
    assert handoff in listed
