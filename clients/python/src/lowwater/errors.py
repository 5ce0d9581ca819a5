"""The SDK's error hierarchy.

Every error the SDK raises on its own account derives from :class:`LowwaterError`
and says whether trying again can help (``retriable``). Invalid arguments are
reported with the built-in ``ValueError`` and ``TypeError``.

The exceptions a *handler* raises to choose an outcome (``Retry``,
``DeadLetter``...) are not errors; they live in :mod:`lowwater.outcomes`.
"""

from __future__ import annotations

__all__ = ["AlreadySettled", "ConnectionLost", "LowwaterError", "SidecarRejected"]


class LowwaterError(Exception):
    """Base class of the SDK's errors.

    Attributes:
        retriable: True when the same operation may succeed later without any
            change on the caller's side (for example once the sidecar is back).
    """

    retriable: bool = False

    def __init__(self, message: str, *, retriable: bool | None = None) -> None:
        super().__init__(message)
        if retriable is not None:
            self.retriable = retriable


class ConnectionLost(LowwaterError):
    """The stream to the sidecar could not be opened or broke.

    Workers handle this themselves by reconnecting with backoff; it reaches user
    code only through APIs that talk to the sidecar directly.
    """

    retriable = True


class SidecarRejected(LowwaterError):
    """The sidecar refused the stream, or broke the protocol.

    Reconnecting cannot help: the target is not a compatible lowwater sidecar,
    or the request was refused (for example ``UNIMPLEMENTED``,
    ``INVALID_ARGUMENT``, ``PERMISSION_DENIED``). ``run()`` raises it.

    Attributes:
        code: the gRPC status code name (for example ``"UNIMPLEMENTED"``), or
            None for a protocol violation detected by the SDK.
    """

    retriable = False

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class AlreadySettled(LowwaterError):
    """A message was settled twice; each delivery takes exactly one outcome."""

    retriable = False
