"""Plain HTTP calls for the tests: status code and decoded JSON, errors included."""

from __future__ import annotations

import http.client
import json
import urllib.parse
from typing import Any, Callable, Optional, Tuple


def call(url: str, body: Any = None, method: Optional[str] = None,
         raw: Optional[bytes] = None, headers: Optional[dict] = None) -> Tuple[int, Any]:
  """One request on a fresh connection; returns (status, parsed JSON body or text)."""
  parts = urllib.parse.urlsplit(url)
  data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
  method = method or ('GET' if data is None else 'POST')
  connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
  try:
    connection.request(method, parts.path + (f'?{parts.query}' if parts.query else ''),
                       body=data, headers=headers or {'Content-Type': 'application/json'})
    response = connection.getresponse()
    text = response.read()
  finally:
    connection.close()
  try:
    return response.status, json.loads(text)
  except ValueError:
    return response.status, text.decode(errors='replace')


def bad_request_message(call_it: Callable[[], Any]) -> str:
  """The message of the ServingError (HTTP 400) that `call_it` raises."""
  import pytest  # pylint: disable=import-outside-toplevel
  from serving.errors import ServingError  # pylint: disable=import-outside-toplevel
  with pytest.raises(ServingError) as info:
    call_it()
  assert info.value.http_status == 400
  return info.value.message
