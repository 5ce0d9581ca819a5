"""lowwater: the worker SDK for the lowwater Kafka sidecar.

The sidecar owns the Kafka consumer and streams records to workers; a worker
settles every record by its msg_id, and the sidecar commits, per partition,
the lowest offset that is not finished yet. Delivery is at least once, and
records are processed out of order: handlers must be idempotent.

Handler mode (the SDK settles from your handler's result):

- :class:`AsyncWorker` for ``async def handler(msg)``;
- :class:`Worker` for ``def handler(msg)``, run on a thread pool.

Manual mode (you settle each message): :class:`AsyncConsumer`, :class:`Consumer`.

Outcomes: return (ACK), or raise :class:`Retry`, :class:`DeadLetter`,
:class:`Drop` or :class:`AlreadyProcessed`; any other exception means RETRY
with backoff. Tests can use :mod:`lowwater.testing`, an in-process fake sidecar.

Loggers: ``lowwater.worker`` (lifecycle), ``lowwater.connection`` (streams,
reconnects), ``lowwater.handler`` (handler failures), ``lowwater.settle``
(settlements the sidecar rejected), ``lowwater.lease`` (lease extension).
"""

from lowwater.backoff import DEFAULT_RECONNECT_BACKOFF, DEFAULT_RETRY_BACKOFF, Backoff
from lowwater.consumer import AsyncConsumer, Consumer
from lowwater.errors import AlreadySettled, ConnectionLost, LowwaterError, SidecarRejected
from lowwater.message import Message
from lowwater.outcomes import AlreadyProcessed, DeadLetter, Drop, HandlerOutcome, Retry
from lowwater.worker import AsyncHandler, AsyncWorker, SyncHandler, Worker

__all__ = [
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
]
