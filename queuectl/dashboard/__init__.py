"""The web dashboard of `queuectl dashboard`: what the database holds, live, and the DLQ's actions.

``app.create_app`` builds the Flask app; ``server.serve`` runs it under waitress. Pages read
through JobStore's verbs and the CLI's views; actions write through the same library calls as
the CLI (see ``actions.py`` for how one is added).
"""

from __future__ import annotations

from .app import create_app

__all__ = ["create_app"]
