"""A test server's lifetime: started, its environment (endpoint, credentials) set for the code under
test the standard way, and both undone after."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def serving(server: Any) -> Iterator[Any]:
    """``server`` has ``start()``, ``stop()`` and ``env()`` (the variables the clients read)."""
    server.start()
    saved = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    try:
        yield server
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
