"""The peers the suite compares with or talks to: Redis, and free local ports for servers it starts."""

from __future__ import annotations

import socket
from typing import Any


def redis_client(url: str, socket_timeout: float | None = None) -> Any:
    """A client of the Redis database at `url`, or None when the ``redis`` package is missing or
    the server does not answer a PING within a second (the caller skips, saying so)."""
    try:
        import redis
    except ImportError:
        return None
    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=socket_timeout)
    try:
        client.ping()
    except Exception:
        return None
    return client


def delete_keys(client: Any, pattern: str) -> int:
    """Delete the keys matching `pattern` (one test's prefix or namespace), in batches; never
    FLUSHDB or FLUSHALL: other tests and runs share the database. Returns how many went."""
    keys = list(client.scan_iter(match=pattern, count=1000))
    for i in range(0, len(keys), 500):
        client.delete(*keys[i:i + 500])
    return len(keys)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
