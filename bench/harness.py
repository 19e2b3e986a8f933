"""What the benchmarks share: their log line and a blocking HTTP call for set-up and probes."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from typing import Any


def log(message: str) -> None:
    """A progress line on stderr (the figures go to stdout)."""
    print(f"# {message}", file=sys.stderr, flush=True)


def http(url: str, method: str = "GET", body: Any = None, token: str | None = None,
         timeout: float = 10.0) -> tuple[int, bytes]:
    """A blocking request for set-up and recovery probes; (599, b"") when it cannot connect."""
    request = urllib.request.Request(url, method=method,
                                     data=json.dumps(body).encode() if body is not None else None)
    if body is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except (OSError, ValueError):
        return 599, b""
