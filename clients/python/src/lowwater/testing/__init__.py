"""Test helpers: an in-process fake sidecar, and messages for handler unit tests.

Example (sync)::

    from lowwater.testing import FakeSidecar

    def test_acks() -> None:
        with FakeSidecar() as fake:
            record = fake.publish(topic="sms", value=b"123456")
            with lowwater.Worker(fake.target, handle):
                fake.wait_for_settlements(1)
            assert fake.outcome(record) == "ACK"

Example (async)::

    async def scenario() -> None:
        async with FakeSidecar() as fake:
            fake.publish(topic="sms", value=b"123456")
            async with lowwater.AsyncWorker(fake.target, handle):
                await fake.wait_for_settlements_async(1)

To unit-test a handler without any server, use :func:`make_message`.
"""

from lowwater.testing._fake import FakeSidecar
from lowwater.testing._records import (
    DeliveryRecord,
    OutcomeName,
    PublishedRecord,
    RecordingSettler,
    SettlementRecord,
    StreamInfo,
    make_message,
)

__all__ = [
    "DeliveryRecord",
    "FakeSidecar",
    "OutcomeName",
    "PublishedRecord",
    "RecordingSettler",
    "SettlementRecord",
    "StreamInfo",
    "make_message",
]
