"""The exported names are the SDK's contract: changing them is a deliberate act."""

from __future__ import annotations

import inspect

import lowwater
import lowwater.security
import lowwater.testing

EXPECTED = {
    "DEFAULT_RECONNECT_BACKOFF",
    "DEFAULT_RETRY_BACKOFF",
    "AlreadyProcessed",
    "AlreadySettled",
    "AsyncConsumer",
    "AsyncHandler",
    "AsyncWorker",
    "Backoff",
    "ConnectionLost",
    "Consumer",
    "DeadLetter",
    "Drop",
    "HandlerOutcome",
    "LowwaterError",
    "Message",
    "Retry",
    "SidecarRejected",
    "SyncHandler",
    "Worker",
}

EXPECTED_TESTING = {
    "DeliveryRecord",
    "FakeSidecar",
    "OutcomeName",
    "PublishedRecord",
    "RecordingSettler",
    "SettlementRecord",
    "StreamInfo",
    "make_message",
}

EXPECTED_SECURITY = {"ChannelSecurity", "TlsFiles", "TokenSource", "channel_security"}
"""For other clients of the sidecar, such as the ``lowwater status`` CLI."""


def test_top_level_names_are_pinned() -> None:
    assert set(lowwater.__all__) == EXPECTED
    assert len(lowwater.__all__) == len(EXPECTED)
    for name in EXPECTED:
        assert getattr(lowwater, name) is not None


def test_testing_names_are_pinned() -> None:
    assert set(lowwater.testing.__all__) == EXPECTED_TESTING
    for name in EXPECTED_TESTING:
        assert getattr(lowwater.testing, name) is not None


def test_security_names_are_pinned() -> None:
    assert set(lowwater.security.__all__) == EXPECTED_SECURITY
    params = inspect.signature(lowwater.security.channel_security).parameters.values()
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params)


def test_no_protobuf_in_the_public_surface() -> None:
    for name in lowwater.__all__:
        module = getattr(getattr(lowwater, name), "__module__", "")
        assert not module.startswith("lowwater.v1"), name


def test_constructors_take_options_by_keyword_only() -> None:
    positional = {"AsyncWorker": 2, "Worker": 2, "AsyncConsumer": 1, "Consumer": 1}
    for cls_name, count in positional.items():
        params = list(inspect.signature(getattr(lowwater, cls_name)).parameters.values())
        assert [p.kind for p in params[:count]] == [inspect.Parameter.POSITIONAL_OR_KEYWORD] * count
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[count:]), cls_name
        names = {p.name for p in params}
        assert {"max_in_flight", "max_in_flight_bytes", "worker_id", "shutdown_timeout"} <= names


def test_errors_say_whether_they_are_retriable() -> None:
    assert lowwater.ConnectionLost("x").retriable is True
    assert lowwater.SidecarRejected("x", code="UNIMPLEMENTED").retriable is False
    assert lowwater.AlreadySettled("x").retriable is False
    assert lowwater.LowwaterError("x", retriable=True).retriable is True
    assert issubclass(lowwater.ConnectionLost, lowwater.LowwaterError)
    assert not issubclass(lowwater.Retry, lowwater.LowwaterError)
