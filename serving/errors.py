"""One error type for both protocols, carrying TF Serving's status code.

TF Serving decides the HTTP status from the canonical (gRPC) code, so handlers raise a
`ServingError` with that code and each front end maps it the same way TF Serving does.
"""

from __future__ import annotations

import grpc

# TF Serving's ToHTTPStatusCode (model_servers/http_server.cc).
_HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}


class ServingError(Exception):
  """A request the server refuses; `code` is the gRPC status, `http_status` its REST twin."""

  def __init__(self, code: grpc.StatusCode, message: str, http_status: int | None = None):
    super().__init__(message)
    self.code = code
    self.message = message
    self.http_status = http_status or _HTTP_STATUS.get(code, 500)


def invalid(message: str) -> ServingError:
  return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
  return ServingError(grpc.StatusCode.NOT_FOUND, message)


def too_large(message: str) -> ServingError:
  """An over-size body: 413 over REST (TF Serving has no such limit, HTTP has the code)."""
  return ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED, message, http_status=413)
