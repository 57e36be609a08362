"""Serving the dashboard: waitress, a production WSGI server in pure Python, in the foreground
until SIGINT or SIGTERM."""

from __future__ import annotations

import signal
from collections.abc import Callable
from types import FrameType

from flask import Flask
from waitress.server import create_server

#: Threads answering requests: a few people and their live updates (each a few milliseconds).
THREADS = 8


def serve(app: Flask, host: str, port: int, announce: Callable[[str], None]) -> None:
    """Serve `app` on host:port (port 0: any free one), `announce` its URL once it listens, and
    return after SIGINT or SIGTERM, the listening socket closed and the requests in flight done."""
    server = create_server(app, host=host, port=port, threads=THREADS, ident="queuectl")
    shown = f"[{host}]" if ":" in host else host
    announce(f"http://{shown}:{server.effective_port}/")

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)  # waitress ends its loop and its threads on SystemExit

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        server.run()  # SIGINT raises KeyboardInterrupt, which waitress handles alike
    finally:
        server.close()
        signal.signal(signal.SIGTERM, previous)
