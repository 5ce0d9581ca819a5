"""``--log-format json``: one JSON object per line, with stable fields, from a real sidecar;
``--log-levels`` sets concerns apart from ``--log-level``."""

from __future__ import annotations

import json

from coordinator.embedded import SidecarProcess
from tests.support.broker import TopicFactory, unique_name


def test_a_sidecar_logs_one_json_object_per_line(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    sidecar = SidecarProcess(kafka_bootstrap, unique_name("g"), [new_topic(1)],
                             extra=["--log-format", "json",
                                    "--log-levels", "config=DEBUG,rebalance=WARNING"])
    with sidecar:
        sidecar.wait_assigned(1)
        assert sidecar.stop() == 0
    events = [json.loads(line) for line in sidecar.log(200).splitlines()]  # every line
    assert events, sidecar.log()
    assert all({"timestamp", "level", "logger", "event"} <= set(e) for e in events)
    loggers = {e["logger"] for e in events}
    assert "coordinator.sidecar" in loggers
    assert "coordinator.rebalance" not in loggers  # its "assigned" line is INFO: below WARNING
    assert any(e["logger"] == "coordinator.config" and e["level"] == "debug"
               and e["event"].startswith("settings: ") for e in events)
    assert not any(e["level"] == "debug" and e["logger"] != "coordinator.config"
                   for e in events)  # the other concerns stay at INFO
    assert any(e["event"].startswith("serving on ") and e["level"] == "info" for e in events)
    assert all(e["timestamp"].endswith("Z") for e in events)
