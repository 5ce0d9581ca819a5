"""Reading fetched confluent-kafka messages safely."""

from __future__ import annotations

import logging
from typing import Any

records_log = logging.getLogger("coordinator.records")


def record_headers(msg: Any) -> list[tuple[str, bytes | None]] | None:
    """``msg.headers()``, or no headers when the Kafka client cannot decode them.

    confluent-kafka decodes header keys as strict UTF-8. For a key that is not (any
    producer but the Python client can write one), ``headers()`` raises SystemError once,
    and every later call returns a list holding a NULL that crashes the interpreter when
    it is unpacked. So the record's headers are replaced with none, for good, and it is
    delivered with its key and value intact: it must neither kill the stream nor, being
    redelivered, the sidecar.
    """
    try:
        headers: list[tuple[str, bytes | None]] | None = msg.headers()
    except (SystemError, ValueError) as exc:  # SystemError from a UnicodeDecodeError, today
        msg.set_headers([])
        records_log.warning(
            "%s[%d]@%d: the Kafka client cannot decode its headers (%s: %s); delivering it "
            "without headers", msg.topic(), msg.partition(), msg.offset(), type(exc).__name__,
            exc.__cause__ or exc)
        return None
    return headers
