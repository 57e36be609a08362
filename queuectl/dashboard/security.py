"""The dashboard's guards: loopback unless authenticated, HTTP basic auth, CSRF tokens on every
POST, and headers that keep pages out of frames and scripts to our own files.

Without credentials, a request must also name a loopback host in its Host header: a hostile
site whose name is made to resolve to 127.0.0.1 (DNS rebinding) would otherwise be the same
origin as the dashboard in the victim's browser, read its pages and post with its tokens.

CSRF: a synchronizer token. Each browser session gets a random token kept in Flask's session
cookie (signed with a key made at start, HttpOnly, SameSite=Strict); every form carries it and
every POST must send it back (form field ``csrf_token`` or header ``X-CSRF-Token``), compared in
constant time. A POST whose Origin header names another host is refused as well.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from urllib.parse import urlsplit

from flask import Flask, Response, abort, request, session

#: The form field and the header that carry the CSRF token.
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
#: Methods that change nothing, and need no token.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Scripts, styles and images from the dashboard itself only; no frames, no plugins.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine only (127.0.0.0/8, ::1 or localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_credentials(text: str) -> tuple[str, str]:
    """USER:PASSWORD as (user, password); ValueError when either part is missing."""
    user, colon, password = text.partition(":")
    if not colon or not user or not password:
        raise ValueError("--auth takes USER:PASSWORD (both not empty)")
    return user, password


def csrf_token() -> str:
    """This session's CSRF token (made on first use)."""
    token = session.get(CSRF_FIELD)
    if not isinstance(token, str):
        token = session[CSRF_FIELD] = secrets.token_urlsafe(32)
    return token


def _check_csrf() -> None:
    if request.method in SAFE_METHODS:
        return
    origin = request.headers.get("Origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.host:
        abort(403, "the request comes from another site")
    expected = session.get(CSRF_FIELD)
    sent = request.form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER) or ""
    if not isinstance(expected, str) or not hmac.compare_digest(sent.encode(), expected.encode()):
        abort(400, "the CSRF token is missing or wrong: reload the page and try again")


def _loopback_host() -> None:
    host = urlsplit(f"//{request.host}").hostname or ""
    if not is_loopback(host):
        abort(403, f"this dashboard answers to loopback names only (127.0.0.1, localhost), not {host!r}: "
                   "start it with --auth to serve other names")


def _basic_auth(user: str, password: str) -> Response | None:
    given = request.authorization
    if (
        given is not None and given.type == "basic"
        and hmac.compare_digest((given.username or "").encode(), user.encode())
        and hmac.compare_digest((given.password or "").encode(), password.encode())
    ):
        return None
    return Response(
        "authentication required\n", 401,
        {"WWW-Authenticate": 'Basic realm="queuectl dashboard", charset="UTF-8"'}, mimetype="text/plain",
    )


def _headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    return response


def install(app: Flask, credentials: tuple[str, str] | None) -> None:
    """Guard every route of `app`: basic auth first (when `credentials`), then CSRF on POSTs."""
    app.secret_key = secrets.token_bytes(32)
    app.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Strict",
                      SESSION_COOKIE_NAME="queuectl_dashboard")
    if credentials is not None:
        user, password = credentials
        app.before_request(lambda: _basic_auth(user, password))
    else:
        app.before_request(_loopback_host)
    app.before_request(_check_csrf)
    app.after_request(_headers)
    app.jinja_env.globals["csrf_token"] = csrf_token
