"""An RFC 7662 token-introspection endpoint on loopback, for Dovecot's ``oauth2`` passdb.

Dovecot validates XOAUTH2 / OAUTHBEARER tokens by POSTing ``token=...`` to this endpoint
(``introspection_mode = post``) and reading ``active`` and ``username`` from the JSON
answer.  The test decides which tokens are valid (``grant``/``revoke``), so the real
Dovecot + Postfix pair becomes an OAuth-protected relay that nobody here wrote, with the
token oracle under the test's control.

Why a thread and ``http.server`` rather than asyncio: the endpoint must keep answering
while a test blocks its own event loop or runs a subprocess (swaks), and it has to live
for a whole pytest session across many event loops.  It binds 127.0.0.1 on an ephemeral
port and never logs a request (request bodies hold tokens).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs

from reconciler.secret import Secret

_MAX_BODY = 64 * 1024
PATH = "/introspect"


class IntrospectionServer:
    """A loopback introspection endpoint; tokens are held as :class:`Secret`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: dict[Secret, str] = {}  # token -> username
        # Other token oracles asked when a token is not granted here (an OAuth server of
        # the devservers: its tokens then work against Dovecot too).  Each returns an
        # RFC 7662 answer; the first ``active`` one wins.
        self.delegates: list[Callable[[Secret], dict[str, Any]]] = []
        self.requests = 0  # how many introspection calls Dovecot made
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = min(int(self.headers.get("Content-Length") or 0), _MAX_BODY)
                form = parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
                token = Secret((form.get("token") or [""])[0])
                answer = server._introspect(token, self.path)
                body = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                """Silence: the default writes to stderr, and a query may hold a token."""

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="introspection", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}{PATH}"

    def grant(self, token: Secret, username: str) -> None:
        """Make ``token`` active for ``username``."""
        with self._lock:
            self._active[token] = username

    def revoke(self, token: Secret) -> None:
        with self._lock:
            self._active.pop(token, None)

    def _introspect(self, token: Secret, path: str) -> dict[str, Any]:
        with self._lock:
            self.requests += 1
            username = self._active.get(token) if path.split("?")[0] == PATH else None
        if username is not None:
            return {"active": True, "username": username, "scope": "https://mail.example/smtp"}
        for delegate in list(self.delegates):
            answer = delegate(token)
            if answer.get("active") is True:
                return answer
        return {"active": False}

    def start(self) -> IntrospectionServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> IntrospectionServer:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
