#!/usr/bin/env python3
"""A TCP forwarder that adds a fixed one-way delay: the "15 ms each way" of the lossy link.

The kernel here has no netem, so delay cannot come from ``tc``. This process listens on
127.0.0.1 in the namespace it was started in (the host's), then moves itself into the
network namespace ``--netns`` (``/run/netns/NAME``, via setns(2)) so that its outgoing
connections leave from there, over the veth pair, to ``--target`` in the board's namespace.
Every chunk read in either direction is written out ``--delay-ms`` after it arrived (order
kept, throughput not limited: a delay line, not a bandwidth cap). Packet LOSS is not done
here: nftables rules in the board's namespace drop packets (tests/boards/lossy.py).

``--cut-file PATH``: a link drop on demand. When a connection's client has sent
``--cut-after`` bytes and PATH holds a number N > 0, N is decremented and that connection is
cut (both sockets reset), as when a Wi-Fi link goes away mid-transfer (short connections,
e.g. a reachability check, are not cut). The
tests use it to make the SSH backend's retries happen for certain, not by chance.

Prints ``PORT <n>`` on stdout when ready; runs until terminated.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import queue
import socket
import struct
import sys
import threading
import time

CLONE_NEWNET = 0x40000000


def enter_netns(name: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


def take_cut(path: str) -> bool:
    """True (and one fewer left) if PATH asks for another cut connection."""
    if not path:
        return False
    try:
        with open(path, "r+") as f:
            n = int(f.read().strip() or 0)
            if n <= 0:
                return False
            f.seek(0)
            f.truncate()
            f.write(str(n - 1))
            return True
    except (OSError, ValueError):
        return False


def reset(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class Pipe:
    """One connection: two directions, each a reader thread and a delayed writer thread."""

    def __init__(self, client: socket.socket, upstream: socket.socket, delay: float, cut_after: int, cut_file: str):
        self.client, self.upstream, self.delay = client, upstream, delay
        self.cut_after, self.cut_file = cut_after, cut_file
        self.sent_by_client = 0
        self.dead = threading.Event()
        self.lock = threading.Lock()

    def start(self) -> None:
        for src, dst, from_client in ((self.client, self.upstream, True), (self.upstream, self.client, False)):
            q: queue.Queue = queue.Queue()
            threading.Thread(target=self._read, args=(src, q, from_client), daemon=True).start()
            threading.Thread(target=self._write, args=(dst, q), daemon=True).start()

    def kill(self) -> None:
        with self.lock:
            if not self.dead.is_set():
                self.dead.set()
                reset(self.client)
                reset(self.upstream)

    def _read(self, src: socket.socket, q: queue.Queue, from_client: bool) -> None:
        try:
            while not self.dead.is_set():
                data = src.recv(65536)
                if not data:
                    break
                q.put((time.monotonic() + self.delay, data))
                if from_client and self.cut_file:
                    before = self.sent_by_client
                    self.sent_by_client += len(data)
                    if before < self.cut_after <= self.sent_by_client and take_cut(self.cut_file):
                        print(f"CUT connection after {self.sent_by_client} bytes from the client", file=sys.stderr, flush=True)
                        self.kill()
                        return
        except OSError:
            pass
        q.put((time.monotonic() + self.delay, b""))  # EOF travels with the same delay

    def _write(self, dst: socket.socket, q: queue.Queue) -> None:
        try:
            while True:
                due, data = q.get()
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                if self.dead.is_set():
                    return
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(data)
        except OSError:
            self.kill()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", required=True, help="HOST:PORT inside --netns")
    p.add_argument("--netns", default="", help="network namespace to connect from (ip netns name)")
    p.add_argument("--delay-ms", type=float, default=15.0, help="one-way delay added in each direction")
    p.add_argument("--cut-file", default="")
    p.add_argument("--cut-after", type=int, default=8000)
    a = p.parse_args(argv)
    host, _, port = a.target.rpartition(":")
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", 0))  # in the host's namespace: reachable over loopback
    lsock.listen(64)
    if a.netns:
        enter_netns(a.netns)  # the listening socket stays where it was made
    print(f"PORT {lsock.getsockname()[1]}", flush=True)
    while True:
        client, _ = lsock.accept()
        try:
            upstream = socket.create_connection((host, int(port)), timeout=10)
            upstream.settimeout(None)
        except OSError as exc:
            print(f"upstream connect failed: {exc}", file=sys.stderr, flush=True)
            reset(client)
            continue
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        Pipe(client, upstream, a.delay_ms / 1000.0, a.cut_after, a.cut_file).start()


if __name__ == "__main__":
    sys.exit(main())
