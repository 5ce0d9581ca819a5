"""Runs the grpcurl commands of the README and of docs/ against a live sidecar, as a person
would."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

from coordinator.embedded import SidecarProcess
from tests.support.broker import TopicFactory, id_records, produce, unique_name

README = Path(__file__).resolve().parents[2] / "README.md"
README_ADDRESS = "127.0.0.1:50051"
"""The address the README's commands use; the test swaps in the live sidecar's."""


def readme_grpcurl_commands() -> list[list[str]]:
    text = README.read_text()
    marker = text.index("<!-- grpcurl-transcript")
    block = re.search(r"```sh\n(.*?)```", text[marker:], re.DOTALL)
    assert block is not None, "the README lost its grpcurl block"
    return [shlex.split(line) for line in block.group(1).splitlines()
            if line.startswith("grpcurl ")]


def run(grpcurl: str, argv: list[str], target: str) -> str:
    args = [grpcurl] + [target if a == README_ADDRESS else a for a in argv[1:]]
    done = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, f"{shlex.join(argv)} failed:\n{done.stderr}"
    return done.stdout


def test_readme_grpcurl_commands_work(
    grpcurl: str, kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    topic = new_topic(1)
    produce(kafka_bootstrap, topic, id_records(3))
    commands = readme_grpcurl_commands()
    assert [c[-1] for c in commands] == [
        "list", "lowwater.v1.Coordinator", "lowwater.v1.Admin/GetStatus",
        "lowwater.v1.Coordinator/Pull", "lowwater.v1.Coordinator/Acknowledge"]
    with SidecarProcess(kafka_bootstrap, unique_name("g"), [topic]) as sidecar:
        sidecar.wait_assigned(1)
        listing, describe, status, pull, ack = (run(grpcurl, c, sidecar.target) for c in commands)
        print(listing, describe, status, pull, ack, sep="\n")  # the transcript, with -s

    services = set(listing.split())
    assert {"lowwater.v1.Coordinator", "lowwater.v1.Admin", "grpc.health.v1.Health"} <= services
    assert "rpc Stream ( stream .lowwater.v1.StreamRequest )" in describe
    assert json.loads(status)["partitions"][0]["topic"] == topic

    deliveries = json.loads(pull)["deliveries"]
    assert [d["msg_id"] for d in deliveries] == ["1", "2"]  # msg_ids start at 1 per process
    assert [d["offset"] for d in deliveries] == ["0", "1"]

    results = json.loads(ack)["results"]
    assert [r["status"] for r in results] == ["SETTLE_STATUS_OK", "SETTLE_STATUS_OK"]


DOCS = Path(__file__).resolve().parents[2] / "docs"
DOCS_TOPIC = "sms.verification"
"""The topic the docs' commands name; the test swaps in its own."""
DOCS_ADMIN_TOKEN = "$ADMIN_TOKEN"
"""The Admin token the docs' commands send. The docs' sidecar has no Admin token (the other
commands send none) and allows mutating calls with ``--admin-insecure``; the header is
ignored. Tokens themselves are tested in tests/integration/test_channel_security.py."""


def docs_grpcurl_commands() -> list[tuple[str, list[str]]]:
    """Every ``$ grpcurl ...`` line in docs/*.md (with its ``\\`` continuations joined)."""
    found = []
    for path in sorted(DOCS.glob("*.md")):
        text = path.read_text().replace("\\\n", " ")
        found += [(path.name, shlex.split(line[2:])) for line in text.splitlines()
                  if line.startswith("$ grpcurl ")]
    return found


def test_the_docs_grpcurl_commands_work(
    grpcurl: str, kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    topic = new_topic(4)
    produce(kafka_bootstrap, topic, id_records(12))
    commands = docs_grpcurl_commands()
    assert {name for name, _ in commands} >= {"metrics.md", "operations.md"}
    with SidecarProcess(kafka_bootstrap, unique_name("g"), [topic],
                        extra=["--admin-insecure"]) as sidecar:
        sidecar.wait_assigned(4)
        for name, argv in commands:
            argv = [a.replace(DOCS_TOPIC, topic).replace(DOCS_ADMIN_TOKEN, "docs-token")
                    for a in argv]
            out = run(grpcurl, argv, sidecar.target)
            json.loads(out)  # each answers a JSON document
            print(f"{name}: {shlex.join(argv)}\n{out}")
