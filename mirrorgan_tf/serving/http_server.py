"""The HTTP server for the REST API: request framing (Content-Length, the body cap), JSON
answers with TF Serving's HTTP statuses. The routes and the JSON codec are in rest.py."""

from __future__ import annotations

import http.server
import json
import logging
import socket

import grpc

from mirrorgan_tf.serving.errors import ServingError
from mirrorgan_tf.serving.rest import RestApi

log = logging.getLogger("mirrorgan_tf.serve")


class RestHandler(http.server.BaseHTTPRequestHandler):
    """HTTP/1.1 framing for RestApi. The server object carries `api` (a RestApi) and `max_body`
    (bytes)."""

    protocol_version = "HTTP/1.1"
    server_version = "mirrorgan-serve"

    def do_POST(self):
        self._answer(lambda: self.server.api.post(self.path, self._read_body))

    def do_GET(self):
        self._answer(lambda: self.server.api.get(self.path))

    def log_message(self, format, *args):  # noqa: A002  (the base class's signature)
        log.debug("%s %s", self.address_string(), format % args)

    def _answer(self, handle):
        self._body_read = False
        try:
            status, body = 200, handle()
        except ServingError as e:
            log.info("%s %s: %s: %s", self.command, self.path, e.code.name, e.message)
            status, body = e.http_status, {"error": e.message}
        except Exception as e:  # noqa: BLE001  (the server must keep serving)
            log.exception("%s %s failed", self.command, self.path)
            status, body = 500, {"error": f"internal error: {type(e).__name__}: {e}"}
        if not self._body_read and self.headers.get("Content-Length", "0").strip() != "0":
            self.close_connection = True  # the unread body would be taken for the next request
        data = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            raise _http_error(411, "send the request body with a Content-Length, not chunked")
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise _http_error(411, "missing or malformed Content-Length")
        if int(length) > self.server.max_body:
            raise _http_error(413, f"the request body has {length} bytes, more than the cap of "
                                   f"{self.server.max_body} (--max-message-mb)")
        raw = self.rfile.read(int(length))
        self._body_read = True
        return raw


def _http_error(status: int, message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message, http_status=status)


class RestServer(http.server.ThreadingHTTPServer):
    """A threaded HTTP server answering RestApi's routes at address (host, port)."""

    daemon_threads = True

    def __init__(self, address, api: RestApi, max_body: int):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.api = api
        self.max_body = max_body
        super().__init__(address, RestHandler)
