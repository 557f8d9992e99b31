"""A small Server-Sent Events client for the tests and bench/events: one HTTP/1.1 GET on
its own socket, the response head parsed, the chunked body decoded and split into
events (event, id, data) and comments (": ping") as the bytes arrive.

Streams are driven either one at a time (read_until) or many together through a
selectors loop (pump): the socket is non-blocking once the request is sent, so a
thousand streams can be read by one thread.
"""

import json
import selectors
import socket
import time


class SseStream:
    def __init__(self, port, path, headers=None, host="127.0.0.1", connect=True):
        self.port = port
        self.path = path
        self.extra = headers or {}
        self.host = host
        self.sock = None
        self.raw = b""  # bytes not parsed yet (head, then chunk framing)
        self.status = None
        self.headers = {}
        self.body = b""  # the decoded body (whole), for non-stream answers
        self.text = ""  # decoded body not yet split into events
        self.events = []  # dicts: event, id, data (str), json (parsed data or None)
        self.comments = []
        self.chunked = False
        self.length = None
        self.ended = False  # the body ended (last chunk, or the whole Content-Length)
        self.closed = False  # the server closed the connection
        if connect:
            self.connect()

    def connect(self):
        self.sock = socket.create_connection((self.host, self.port), timeout=10)
        lines = ["GET %s HTTP/1.1" % self.path, "Host: test", "Accept: text/event-stream"]
        for k, v in self.extra.items():
            lines.append("%s: %s" % (k, v))
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.sock.setblocking(False)

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None

    def fileno(self):
        return self.sock.fileno()

    # parsing -------------------------------------------------------------------------
    def on_readable(self):
        """Reads what is there; returns False once the connection is closed."""
        try:
            data = self.sock.recv(262144)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            data = b""
        if not data:
            self.closed = True
            return False
        self.feed(data)
        return True

    def feed(self, data):
        self.raw += data
        if self.status is None:
            head, sep, rest = self.raw.partition(b"\r\n\r\n")
            if not sep:
                return
            lines = head.decode("latin-1").split("\r\n")
            self.status = int(lines[0].split()[1])
            for line in lines[1:]:
                k, _, v = line.partition(":")
                self.headers[k.strip().lower()] = v.strip()
            self.chunked = "chunked" in self.headers.get("transfer-encoding", "")
            if "content-length" in self.headers:
                self.length = int(self.headers["content-length"])
            self.raw = rest
            if not self.chunked and (self.length == 0 or self.status in (204, 304)):
                self.ended = True
        if self.chunked:
            while not self.ended:
                line, sep, rest = self.raw.partition(b"\r\n")
                if not sep:
                    return
                size = int(line.split(b";")[0], 16)
                if len(rest) < size + 2:
                    return
                self.raw = rest[size + 2:]
                if size == 0:
                    self.ended = True
                    break
                self._body(rest[:size])
        elif not self.ended:
            self._body(self.raw)
            self.raw = b""
            if self.length is not None and len(self.body) >= self.length:
                self.ended = True

    def _body(self, data):
        self.body += data
        self.text += data.decode("utf-8")
        while "\n\n" in self.text:
            block, _, self.text = self.text.partition("\n\n")
            ev = {"event": "message", "id": None, "data": None}
            data_lines = []
            for line in block.split("\n"):
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                    continue
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "data":
                    data_lines.append(value)
                elif name in ("event", "id"):
                    ev[name] = value
            if not data_lines and ev["id"] is None and ev["event"] == "message":
                continue  # a comment-only block
            ev["data"] = "\n".join(data_lines)
            try:
                ev["json"] = json.loads(ev["data"])
            except ValueError:
                ev["json"] = None
            self.events.append(ev)

    def json(self):
        try:
            return json.loads(self.body.decode("utf-8"))
        except ValueError:
            return None

    # driving one stream -------------------------------------------------------------
    def read_until(self, pred, timeout=10.0):
        """Reads until pred(self) holds or the connection closes; returns pred(self)."""
        deadline = time.monotonic() + timeout
        sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ)
        try:
            while not pred(self) and not self.closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                if sel.select(min(left, 0.5)):
                    self.on_readable()
        finally:
            sel.close()
        return pred(self)

    def ids(self):
        return [int(e["id"]) for e in self.events if e["id"] is not None]


def pump(streams, pred, timeout=30.0):
    """Reads many streams until pred() holds (or the deadline); returns pred()."""
    sel = selectors.DefaultSelector()
    live = {}
    for s in streams:
        if s.sock is not None and not s.closed:
            sel.register(s.sock, selectors.EVENT_READ, s)
            live[s] = True
    deadline = time.monotonic() + timeout
    try:
        while not pred():
            left = deadline - time.monotonic()
            if left <= 0 or not live:
                break
            for key, _ in sel.select(min(left, 0.5)):
                s = key.data
                if not s.on_readable():
                    sel.unregister(s.sock)
                    live.pop(s, None)
    finally:
        sel.close()
    return pred()
