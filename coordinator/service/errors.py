"""Project errors -> gRPC status codes with ``google.rpc.Status`` details."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status


def invalid_argument(field: str, description: str) -> grpc.Status:
    """INVALID_ARGUMENT naming the offending request field (a ``BadRequest`` detail)."""
    detail = any_pb2.Any()
    detail.Pack(
        error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
            ]
        )
    )
    status = status_pb2.Status(
        code=code_pb2.INVALID_ARGUMENT, message=f"{field}: {description}", details=[detail]
    )
    return rpc_status.to_status(status)


def unavailable(message: str, *, reason: str) -> grpc.Status:
    """UNAVAILABLE with an ``ErrorInfo`` detail (``reason`` like ``DRAINING``); clients retry."""
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="lowwater"))
    status = status_pb2.Status(code=code_pb2.UNAVAILABLE, message=message, details=[detail])
    return rpc_status.to_status(status)


def not_found(message: str, *, resource_type: str, resource_name: str) -> grpc.Status:
    """NOT_FOUND with a ``ResourceInfo`` detail naming what was not found."""
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ResourceInfo(resource_type=resource_type,
                                               resource_name=resource_name))
    status = status_pb2.Status(code=code_pb2.NOT_FOUND, message=message, details=[detail])
    return rpc_status.to_status(status)


def failed_precondition(message: str, *, subject: str, description: str,
                        kind: str = "STATE") -> grpc.Status:
    """FAILED_PRECONDITION with a ``PreconditionFailure`` detail: what must change first."""
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.PreconditionFailure(violations=[
        error_details_pb2.PreconditionFailure.Violation(
            type=kind, subject=subject, description=description)]))
    status = status_pb2.Status(code=code_pb2.FAILED_PRECONDITION, message=message,
                               details=[detail])
    return rpc_status.to_status(status)


def unauthenticated(message: str, *, reason: str) -> grpc.Status:
    """UNAUTHENTICATED with an ``ErrorInfo`` detail (``reason`` like ``TOKEN_MISSING``)."""
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="lowwater"))
    status = status_pb2.Status(code=code_pb2.UNAUTHENTICATED, message=message, details=[detail])
    return rpc_status.to_status(status)


def permission_denied(message: str, *, reason: str, settings: str) -> grpc.Status:
    """PERMISSION_DENIED with an ``ErrorInfo`` detail whose ``settings`` metadata names the
    settings that would allow the call."""
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="lowwater",
                                            metadata={"settings": settings}))
    status = status_pb2.Status(code=code_pb2.PERMISSION_DENIED, message=message,
                               details=[detail])
    return rpc_status.to_status(status)


def limit_exceeded(limit: str, description: str) -> grpc.Status:
    """RESOURCE_EXHAUSTED for a request (or a stream) over one of the sidecar's limits.

    The details name the limit twice over: a ``QuotaFailure`` whose violation's subject is the
    setting (``max_streams``, ``max_settlement_batch``, ...), and an ``ErrorInfo`` with reason
    ``LIMIT_EXCEEDED`` and the setting in its ``limit`` metadata.
    """
    quota, info = any_pb2.Any(), any_pb2.Any()
    quota.Pack(error_details_pb2.QuotaFailure(violations=[
        error_details_pb2.QuotaFailure.Violation(subject=limit, description=description)]))
    info.Pack(error_details_pb2.ErrorInfo(reason="LIMIT_EXCEEDED", domain="lowwater",
                                          metadata={"limit": limit}))
    status = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message=f"{limit}: {description}",
                               details=[quota, info])
    return rpc_status.to_status(status)
