"""A camera's host name looked up within the open deadline, in a child process that a stop can end.

``getaddrinfo`` cannot be interrupted: a resolver that retries (a DNS server
gone, an mDNS name nobody answers) holds its caller for tens of seconds. Run
in a thread, it outlived the camera that asked (``stop`` returned, the thread
went on, and each reopen started another). Run in a child process, it is
killed and reaped as soon as the open gives up (its deadline, or ``stop``):
a stopped camera leaves neither a thread nor a process behind. The child is
the same interpreter, isolated (``-I -S``: no site, no user's environment of
Python), calling the same ``getaddrinfo``, so names resolve as they would in
process (``/etc/hosts``, nsswitch, the search domains).

An address literal (``10.0.0.5``, ``fd00::5``) needs no lookup: it is read
in process at once, with ``AI_NUMERICHOST``, and no child is started.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Callable

# The child: prints {"addresses": [[family, type, proto, sockaddr], ...]} or {"error": [errno, message]}.
_CHILD = (
    "import json, socket, sys\n"
    "try:\n"
    "    found = socket.getaddrinfo(sys.argv[1], int(sys.argv[2]), type=socket.SOCK_STREAM)\n"
    "    print(json.dumps({'addresses': [[f, t, p, list(a)] for f, t, p, _, a in found]}))\n"
    "except socket.gaierror as exc:\n"
    "    print(json.dumps({'error': [exc.errno, exc.strerror]}))\n"
)
RESOLVER: tuple[str, ...] = (sys.executable, "-I", "-S", "-c", _CHILD)  # the host and port are appended

AddrInfo = tuple[socket.AddressFamily, socket.SocketKind, int, str, tuple]


def lookup(host: str, port: int, left: Callable[[], float]) -> list[AddrInfo]:
    """The addresses of ``host`` for a TCP connection to ``port``.

    ``left()`` gives how long to wait before looking again (and raises when the open must end: its deadline
    or a stop); whatever it raises ends the lookup's child first. OSError (``socket.gaierror`` for a name
    that does not resolve) when there is no address."""
    try:  # an address literal: no lookup, no child
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except socket.gaierror:
        pass
    child = subprocess.Popen(
        [*RESOLVER, host, str(port)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        while True:
            try:
                out, _ = child.communicate(timeout=left())
                break
            except subprocess.TimeoutExpired:
                continue
    finally:
        if child.poll() is None:  # the open gave up first: the lookup ends with it
            child.kill()
        child.communicate()  # reaped: no process left behind
    try:
        answer = json.loads(out)
    except ValueError:
        answer = {}
    if "error" in answer:
        number, message = answer["error"]
        raise socket.gaierror(number, message)
    if not answer.get("addresses"):
        raise OSError(f"the name lookup of {host} failed (its process ended with status {child.returncode})")
    return [
        (socket.AddressFamily(family), socket.SocketKind(kind), proto, "", tuple(address))
        for family, kind, proto, address in answer["addresses"]
    ]


__all__ = ["RESOLVER", "lookup"]
