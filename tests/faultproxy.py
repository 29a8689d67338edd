"""A fault-injecting HTTP reverse proxy for end-to-end tests: put it between `velo` and an S3 endpoint.

    proxy = FaultProxy("http://127.0.0.1:5000").start()      # listens on 127.0.0.1:<free port>
    proxy.fail("GET", r"^/bucket/in/1\\.csv", status=503, times=2)   # the next 2 matching requests get a 503
    proxy.reset("GET", r"^/bucket/in/1\\.csv", times=1)      # then 1 gets its connection reset, no response
    proxy.delay("PUT", r".*", seconds=2, times=1)            # the next PUT waits 2 s before being forwarded
    proxy.cut("GET", r"^/bucket/in/1\\.csv", after=1000)     # the next GET's body stops after 1000 bytes (RST)
    proxy.deny("GET", r"^/bucket/in/2\\.csv")                 # every matching request: 403 AccessDenied
    env = {"AWS_ENDPOINT_URL": proxy.url}
    ...
    proxy.hits("GET", r"^/bucket/in/1\\.csv")                # what happened to each matching request
    proxy.stop()

Rules are tried in the order they were added; the first matching rule that has requests left
applies (a `deny` rule never runs out). Anything else is forwarded unchanged: method, path, query,
headers and body go to the upstream endpoint, and its response is streamed back. Every request is
recorded with the fault it got (`"503"`, `"reset"`, `"cut"`, `"delay"`, `"403"`) or `"forwarded"` and the
upstream status.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

__all__ = ["FaultProxy", "Hit", "Rule"]

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "expect",  # the proxy answers `Expect: 100-continue` itself
}
_ERROR_CODES = {
    403: ("AccessDenied", "Access Denied"),
    500: ("InternalError", "We encountered an internal error. Please try again."),
    502: ("BadGateway", "Bad gateway (injected)."),
    503: ("SlowDown", "Please reduce your request rate."),
    504: ("GatewayTimeout", "Gateway timeout (injected)."),
}


@dataclass
class Rule:
    """One fault: `kind` is "status", "reset", "cut" or "delay"; `times` None means forever."""

    method: str
    pattern: re.Pattern[str]
    kind: str
    times: int | None
    status: int = 0
    seconds: float = 0.0
    code: str | None = None  # the S3 error code of a "status" fault (default: the status's usual one)
    after: int = 0  # bytes of the body a "cut" fault lets through
    used: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.times is not None and self.used >= self.times:
            return False
        return self.method in ("*", method) and self.pattern.search(path) is not None


@dataclass
class Hit:
    """One request the proxy saw and what it did with it."""

    method: str
    path: str
    fault: str  # "forwarded", "reset", "delay", or the injected status ("503", "403", ...)
    status: int | None = None  # the status the client got (None: connection reset)
    at: float = field(default_factory=time.monotonic)


class FaultProxy:
    """A threaded reverse proxy on 127.0.0.1 in front of ``upstream`` (``http://host:port``)."""

    def __init__(self, upstream: str, host: str = "127.0.0.1", port: int = 0) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"upstream must be http://host:port, not {upstream!r}")
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        self._hits: list[Hit] = []
        self._server = _Server((host, port), _Handler)
        self._server.proxy = self
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._server.serve_forever, name="faultproxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------------------------------- rules

    def _add(self, rule: Rule) -> Rule:
        with self._lock:
            self._rules.append(rule)
        return rule

    def fail(self, method: str, path_regex: str, *, status: int = 503, times: int = 1, code: str | None = None) -> Rule:
        """Answer the next ``times`` matching requests with ``status`` and an S3 XML error body
        (its ``<Code>`` is ``code``, else the status's usual one: 503 SlowDown, 500 InternalError...)."""
        return self._add(Rule(method.upper(), re.compile(path_regex), "status", times, status=status, code=code))

    def cut(self, method: str, path_regex: str, *, after: int, times: int = 1) -> Rule:
        """Forward the next ``times`` matching requests, but reset the connection (TCP RST) after
        ``after`` bytes of the response body: a connection dropped mid-download."""
        return self._add(Rule(method.upper(), re.compile(path_regex), "cut", times, after=after))

    def reset(self, method: str, path_regex: str, *, times: int = 1) -> Rule:
        """Close the connection of the next ``times`` matching requests without answering (TCP RST)."""
        return self._add(Rule(method.upper(), re.compile(path_regex), "reset", times))

    def delay(self, method: str, path_regex: str, *, seconds: float, times: int = 1) -> Rule:
        """Hold the next ``times`` matching requests ``seconds`` before forwarding them."""
        return self._add(Rule(method.upper(), re.compile(path_regex), "delay", times, seconds=seconds))

    def deny(self, method: str, path_regex: str) -> Rule:
        """Answer every matching request, for ever, with 403 AccessDenied."""
        return self._add(Rule(method.upper(), re.compile(path_regex), "status", None, status=403))

    def clear(self) -> None:
        """Forget every rule (the record of requests is kept)."""
        with self._lock:
            self._rules.clear()

    def _take(self, method: str, path: str) -> Rule | None:
        with self._lock:
            for rule in self._rules:
                if rule.matches(method, path):
                    rule.used += 1
                    return rule
        return None

    # -------------------------------------------------------------------------------------- records

    def _record(self, hit: Hit) -> None:
        with self._lock:
            self._hits.append(hit)

    def hits(self, method: str = "*", path_regex: str = "") -> list[Hit]:
        """Every request seen so far whose method (``*``: any) and path (regex search) match."""
        pattern = re.compile(path_regex)
        with self._lock:
            return [h for h in self._hits if method in ("*", h.method) and pattern.search(h.path)]

    def faults(self, method: str = "*", path_regex: str = "") -> list[str]:
        """The fault each matching request got, in order (``"forwarded"`` when none)."""
        return [h.fault for h in self.hits(method, path_regex)]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    proxy: FaultProxy

    def handle_error(self, request, client_address) -> None:
        """A client that went away mid-answer is no news: stay quiet."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.resets: set = set()  # connections to close with a RST (sockets take no attributes)

    def shutdown_request(self, request) -> None:
        if request in self.resets:
            self.resets.discard(request)
            with contextlib.suppress(OSError):
                request.close()  # SO_LINGER 0: the close sends RST, no FIN first
            return
        super().shutdown_request(request)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        """No access log on stderr."""

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            body = bytearray()
            while True:
                size_line = self.rfile.readline()
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return bytes(body)
                body += self.rfile.read(size)
                self.rfile.readline()  # the CRLF after each chunk
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        proxy = self.server.proxy
        method, path = self.command, self.path
        body = self._read_body()
        rule = proxy._take(method, path)
        if rule is not None and rule.kind == "reset":
            proxy._record(Hit(method, path, "reset"))
            self._reset_after_answer()
            return
        if rule is not None and rule.kind == "status":
            proxy._record(Hit(method, path, str(rule.status), rule.status))
            self._send_error(rule.status, method, rule.code)
            return
        fault = "forwarded"
        if rule is not None and rule.kind == "delay":
            fault = "delay"
            time.sleep(rule.seconds)
        cut = rule.after if rule is not None and rule.kind == "cut" else None
        status = None
        try:
            status = self._forward(method, path, body, cut)
        finally:  # recorded even when the client gave up meanwhile (a delay past its timeout)
            proxy._record(Hit(method, path, "cut" if cut is not None else fault, status))

    def _send_error(self, status: int, method: str, code: str | None = None) -> None:
        usual, message = _ERROR_CODES.get(status, ("InjectedError", "Injected error."))
        code = code or usual
        payload = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{message}</Message>"
            "<RequestId>faultproxy</RequestId></Error>"
        ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("x-amz-request-id", "faultproxy")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(payload)

    def _reset_after_answer(self) -> None:
        """Close this connection with a TCP RST once the handler returns (see _Server.shutdown_request)."""
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.server.resets.add(self.connection)
        self.close_connection = True

    def _forward(self, method: str, path: str, body: bytes, cut: int | None = None) -> int | None:
        proxy = self.server.proxy
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        if body or method in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        upstream = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=60)
        try:
            upstream.request(method, path, body=body or None, headers=headers)
            response = upstream.getresponse()
            self.send_response_only(response.status, response.reason)
            length = response.getheader("Content-Length")
            for name, value in response.getheaders():
                if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                    self.send_header(name, value)
            if method == "HEAD" or response.status in (204, 304) or response.status < 200:
                if length is not None:
                    self.send_header("Content-Length", length)
                self.end_headers()
                response.read()
            elif length is not None:
                self.send_header("Content-Length", length)
                self.end_headers()
                sent = 0
                while chunk := response.read(1 << 16):  # stream: never the whole object in memory
                    if cut is not None and sent + len(chunk) > cut:
                        self.wfile.write(chunk[: cut - sent])
                        self.wfile.flush()
                        self._reset_after_answer()
                        return response.status
                    self.wfile.write(chunk)
                    sent += len(chunk)
            else:
                data = response.read()
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if cut is not None and len(data) > cut:
                    self.wfile.write(data[:cut])
                    self.wfile.flush()
                    self._reset_after_answer()
                    return response.status
                self.wfile.write(data)
            self.wfile.flush()
            return response.status
        finally:
            upstream.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _handle
