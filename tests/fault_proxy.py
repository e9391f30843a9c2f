"""A loopback HTTP proxy that breaks S3 traffic on purpose, to test retries and resumed reads for real.

It sits between boto3 and an S3 server on 127.0.0.1 and relays requests one at a time per client connection
(keep-alive towards the client, a fresh `Connection: close` connection upstream per request). For a seeded
fraction of requests it injects one fault, the kinds a real object store or load balancer produces:

- `reset_before`: the request is read, then the connection is reset (TCP RST) with no response;
  nothing reaches the server.
- `slow_down`: HTTP 503 with S3's `SlowDown` XML error body; nothing reaches the server.
- `reset_mid_body`: a GET is relayed, the response head and half its body are sent, then the connection
  closes (the client sees fewer bytes than Content-Length).
- `stall_mid_body`: as `reset_mid_body`, but the connection then goes silent for `stall_s` before closing
  (the client's read timeout fires first).
- `corrupt_body`: a GET's body is relayed whole with one byte flipped (what a checksum must catch).
- `latency_s`: added to every request, faulty or not.
- `bandwidth_bps`: responses are paced to this many bytes/s per connection (one S3 stream's share).

`force(kind, method)` makes the next matching request fail, for deterministic tests. `counts` tallies
requests, each injected fault kind and requests that carried a Range header (`range_headers` keeps them).
Stdlib only, threads, bounded by `max_connections`; `stop()` closes every socket and joins every thread.
"""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import IO

FAULT_KINDS = ("reset_before", "slow_down", "reset_mid_body", "stall_mid_body", "corrupt_body")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
SLOW_DOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message><RequestId>fault-proxy</RequestId></Error>"
)


@dataclass
class FaultRates:
    """Probability per request of each fault (their sum is the fault fraction) and the added latency."""

    reset_before: float = 0.0
    slow_down: float = 0.0
    reset_mid_body: float = 0.0
    stall_mid_body: float = 0.0
    corrupt_body: float = 0.0
    latency_s: float = 0.0
    stall_s: float = 2.0
    bandwidth_bps: float = 0.0  # per-connection cap on response bytes/s (0: none), as one S3 stream gets


class _Message:
    """An HTTP message head: start line and headers, order kept, names matched case-insensitively."""

    def __init__(self, start: str, headers: list[tuple[str, str]]) -> None:
        self.start = start
        self.headers = headers

    def get(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def without(self, *names: str) -> _Message:
        drop = {n.lower() for n in names}
        return _Message(self.start, [(k, v) for k, v in self.headers if k.lower() not in drop])

    def with_header(self, name: str, value: str) -> _Message:
        return _Message(self.start, [*self.without(name).headers, (name, value)])

    def encode(self) -> bytes:
        lines = [self.start, *(f"{k}: {v}" for k, v in self.headers)]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _read_head(stream: IO[bytes]) -> _Message | None:
    start = stream.readline(65536)
    if not start:
        return None
    headers = []
    while (line := stream.readline(65536)) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))
    return _Message(start.decode("latin-1").rstrip("\r\n"), headers)


def _read_body(stream: IO[bytes], head: _Message, no_body: bool = False) -> tuple[bytes, bool]:
    """The raw body bytes (chunked framing kept) and whether the body ran to EOF (no length given)."""
    if no_body:
        return b"", False
    if (head.get("Transfer-Encoding") or "").lower().endswith("chunked"):
        raw = bytearray()
        while True:
            size_line = stream.readline(65536)
            raw += size_line
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (trailer := stream.readline(65536)) not in (b"\r\n", b"\n", b""):
                    raw += trailer
                raw += b"\r\n"
                return bytes(raw), False
            raw += stream.read(size + 2)
    length = head.get("Content-Length")
    if length is not None:
        return stream.read(int(length)), False
    if head.start.startswith("HTTP/"):
        return stream.read(), True
    return b"", False


def _arm_reset(sock: socket.socket) -> None:
    # SO_LINGER 0 makes the coming close() send RST, not FIN: the client sees "connection reset by peer".
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class FaultProxy:
    """See the module docstring. Use as a context manager; `endpoint_url` is what boto3 should talk to."""

    def __init__(
        self,
        upstream: tuple[str, int],
        rates: FaultRates | None = None,
        seed: int = 0,
        max_connections: int = 32,
        timeout_s: float = 30.0,
    ) -> None:
        if upstream[0] not in LOOPBACK:
            raise ValueError(f"fault proxy upstream {upstream[0]!r}: loopback only")
        self.upstream = upstream
        self.rates = rates or FaultRates()
        self.timeout_s = timeout_s
        self.counts: Counter[str] = Counter()
        self.range_headers: list[str] = []
        self.requests: list[tuple[str, str, int]] = []  # (method, path, body bytes) of every relayed request
        self._rng = random.Random(seed)
        self._forced: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_connections)
        self._stopping = threading.Event()
        self._clients: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self._acceptor = threading.Thread(target=self._accept_loop, name="fault-proxy-accept", daemon=True)

    def set_faults(self, rates: FaultRates, seed: int = 0) -> None:
        with self._lock:
            self.rates = rates
            self._rng = random.Random(seed)

    def force(self, kind: str, method: str = "GET") -> None:
        """The next request with this method gets this fault, whatever the rates say."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"fault kind {kind!r}: expected one of {FAULT_KINDS}")
        with self._lock:
            self._forced.append((kind, method.upper()))

    @property
    def faults(self) -> int:
        return sum(self.counts[kind] for kind in FAULT_KINDS)

    def _decide(self, method: str, has_range: bool, range_value: str | None) -> str | None:
        with self._lock:
            self.counts["requests"] += 1
            if has_range:
                self.counts["range_requests"] += 1
                self.range_headers.append(range_value or "")
            for i, (kind, wanted) in enumerate(self._forced):
                if wanted == method:
                    del self._forced[i]
                    return kind
            draw = self._rng.random()
            edge = 0.0
            for kind in FAULT_KINDS:
                edge += getattr(self.rates, kind)
                if draw < edge:
                    return kind
            return None

    def _note(self, kind: str) -> None:
        with self._lock:
            self.counts[kind] += 1

    def start(self) -> FaultProxy:
        self._acceptor.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._acceptor.join(timeout=5)
        self._listener.close()
        with self._lock:
            clients = list(self._clients)
        for sock in clients:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            if not self._slots.acquire(timeout=0.2):
                continue
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, OSError):
                self._slots.release()
                continue
            thread = threading.Thread(target=self._serve, args=(client,), name="fault-proxy-conn", daemon=True)
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
            thread.start()

    def _serve(self, client: socket.socket) -> None:
        with self._lock:
            self._clients.add(client)
        client.settimeout(self.timeout_s)
        stream = client.makefile("rb")
        try:
            while not self._stopping.is_set() and self._relay_one(client, stream):
                pass
        except (OSError, ValueError):
            pass  # the client went away, sent garbage, or stop() shut the socket
        finally:
            with self._lock:
                self._clients.discard(client)
            stream.close()  # the socket really closes (RST if armed) only once its file objects are closed
            client.close()
            self._slots.release()

    def _relay_one(self, client: socket.socket, stream: IO[bytes]) -> bool:
        """Relay one request; False when the client connection is finished."""
        request = _read_head(stream)
        if request is None:
            return False
        method = request.start.split(" ", 1)[0].upper()
        if (request.get("Expect") or "").lower() == "100-continue":
            # Answer for the server: botocore otherwise waits ~1 s before sending each upload body.
            client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            request = request.without("Expect")
        body, _ = _read_body(stream, request)
        with self._lock:
            self.requests.append((method, request.start.split(" ")[1], len(body)))
        range_value = request.get("Range")
        kind = self._decide(method, range_value is not None, range_value)
        if self.rates.latency_s:
            time.sleep(self.rates.latency_s)
        if kind == "reset_before":
            self._note(kind)
            _arm_reset(client)
            return False
        if kind == "slow_down":
            self._note(kind)
            head = _Message(
                "HTTP/1.1 503 Slow Down",
                [
                    ("Content-Type", "application/xml"),
                    ("Content-Length", str(len(SLOW_DOWN_BODY))),
                    ("Connection", "close"),
                ],
            )
            client.sendall(head.encode() + SLOW_DOWN_BODY)
            return False
        with socket.create_connection(self.upstream, timeout=self.timeout_s) as upstream:
            upstream.sendall(request.with_header("Connection", "close").encode() + body)
            reply_stream = upstream.makefile("rb")
            reply = _read_head(reply_stream)
            if reply is None:
                _arm_reset(client)
                return False
            status = int(reply.start.split(" ", 2)[1])
            no_body = method == "HEAD" or status in (204, 304) or 100 <= status < 200
            reply_body, to_eof = _read_body(reply_stream, reply, no_body=no_body)
        length = reply.get("Content-Length")
        cut = kind in ("reset_mid_body", "stall_mid_body")
        if cut and method == "GET" and length and int(length) >= 2 and not no_body:
            self._note(kind)
            client.sendall(reply.without("Connection").encode() + reply_body[: len(reply_body) // 2])
            if kind == "stall_mid_body":
                self._stopping.wait(self.rates.stall_s)
            client.shutdown(socket.SHUT_RDWR)
            return False
        if kind == "corrupt_body" and method == "GET" and length and int(length) >= 1 and not no_body:
            self._note(kind)
            middle = len(reply_body) // 2
            reply_body = reply_body[:middle] + bytes([reply_body[middle] ^ 0xFF]) + reply_body[middle + 1 :]
        if to_eof:
            self._send(client, reply.with_header("Connection", "close").encode() + reply_body)
            return False
        self._send(client, reply.without("Connection").encode() + reply_body)
        return True

    def _send(self, client: socket.socket, data: bytes) -> None:
        """Send a response, paced to `bandwidth_bps` when set (64 KiB at a time)."""
        rate = self.rates.bandwidth_bps
        if not rate:
            client.sendall(data)
            return
        start, chunk = time.perf_counter(), 1 << 16
        for offset in range(0, len(data), chunk):
            client.sendall(data[offset : offset + chunk])
            ahead = (offset + chunk) / rate - (time.perf_counter() - start)
            if ahead > 0:
                time.sleep(ahead)
