"""A Unix-socket relay in front of redis-server that can lose one reply: the
request that matches `needle` is executed by Redis, its reply is thrown away and the
client's connection is closed (what a client sees when the network or a failover
cuts the connection between a write and its answer)."""
import os
import select
import socket
import threading


class Proxy:
    def __init__(self, path, upstream, needle=None, reply_prefix=b"+OK", hold=False):
        self.path, self.upstream = path, upstream
        self.hold = hold  # True: the matching request is never forwarded (Redis hangs)
        self.held = 0
        self.needle, self.reply_prefix = needle, reply_prefix
        self.armed = needle is not None
        self.dropped = 0
        self.paused = False
        if os.path.exists(path):
            os.unlink(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(c,), daemon=True).start()

    def _relay(self, c):
        u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            u.connect(self.upstream)
        except OSError:
            c.close()
            return
        watching = False
        try:
            while True:
                r, _, _ = select.select([c, u], [], [])
                if c in r:
                    d = c.recv(65536)
                    if not d:
                        break
                    if self.armed and self.needle in d:
                        if self.hold:
                            self.held += 1
                            self.armed = False
                            while c.recv(65536):
                                pass
                            break
                        watching = True
                    u.sendall(d)
                if u in r:
                    d = u.recv(65536)
                    if not d:
                        break
                    if watching and self.armed and d.startswith(self.reply_prefix):
                        self.armed = False
                        self.dropped += 1
                        break  # the reply is lost, the connection cut
                    watching = False
                    c.sendall(d)
        except OSError:
            pass
        finally:
            c.close()
            u.close()
