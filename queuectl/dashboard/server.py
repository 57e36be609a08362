"""Serving the dashboard: waitress, a production WSGI server in pure Python, in the foreground
until SIGINT or SIGTERM."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from flask import Flask
from waitress.server import create_server

#: Threads answering requests: a few people and their live updates (each a few milliseconds).
THREADS = 8


def serve(app: Flask, host: str, port: int, announce: Callable[[str], None]) -> None:
    """Serve `app` on host:port (port 0: any free one), `announce` its URL once it listens, and
    return after SIGINT or SIGTERM, the listening socket closed and the requests in flight done.

    The signal handlers only set a flag, which the loop looks at after each turn (at least once
    a second: waitress's loop timeout). Raising from a handler, as waitress's own run() expects,
    can interrupt the loop anywhere, a lock of waitress held included: a shutdown then hung."""
    server: Any = create_server(app, host=host, port=port, threads=THREADS, ident="queuectl")
    stopping = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    shown = f"[{host}]" if ":" in host else host
    announce(f"http://{shown}:{server.effective_port}/")
    try:
        while not stopping.is_set():
            server.asyncore.loop(timeout=server.adj.asyncore_loop_timeout, map=server._map,
                                 use_poll=server.adj.asyncore_use_poll, count=1)
    finally:
        server.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
