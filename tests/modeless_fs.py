"""A file system that keeps no file modes, as vfat or exfat mounted with ``umask=022`` is, for tests.

Why not vfat itself: a test machine's kernel may have no vfat (this project's
container has fuse, ext4, xfs, btrfs and tmpfs), and no ``mkfs.vfat``. FUSE is
the kernel's own: this is a small FUSE server speaking the kernel protocol on
``/dev/fuse`` directly (no libfuse), one flat folder of files held in memory,
whose every file shows mode 0755 and every folder 0755 whatever chmod or
``open(..., 0o600)`` asked, as vfat shows its mount's ``umask``. chmod succeeds
and changes nothing (vfat's ``quiet`` option); hard links are refused with EPERM
(vfat has none). Real system calls by any process reach it, so a real verifier
process sees what it would see on vfat.

Mounting needs root (CAP_SYS_ADMIN) and /dev/fuse: :func:`modeless_mount` skips
the test otherwise, as the tmpfs fixtures do.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

FILE_MODE = 0o100755  # a regular file as vfat shows it under umask=022
DIR_MODE = 0o040755
ROOT = 1  # the root folder's node id (FUSE_ROOT_ID)

# Opcodes (include/uapi/linux/fuse.h).
LOOKUP, FORGET, GETATTR, SETATTR = 1, 2, 3, 4
UNLINK, RENAME, LINK, OPEN, READ, WRITE, STATFS, RELEASE = 10, 12, 13, 14, 15, 16, 17, 18
FSYNC, FLUSH, INIT, OPENDIR, READDIR, RELEASEDIR = 20, 25, 26, 27, 28, 29
INTERRUPT, CREATE, DESTROY, BATCH_FORGET = 36, 35, 38, 42
FATTR_SIZE = 1 << 3
MNT_FORCE, MNT_DETACH = 1, 2  # umount2 flags (include/linux/fs.h)

IN_HEADER = struct.Struct("<IIQQIIIHH")  # len, opcode, unique, nodeid, uid, gid, pid, total_extlen, padding
OUT_HEADER = struct.Struct("<IiQ")  # len, error, unique
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")  # fuse_attr: 88 bytes


class _Node:
    def __init__(self, ino: int, name: str, data: bytearray | None) -> None:
        self.ino, self.name, self.data = ino, name, data  # data None: the root folder


class ModelessServer:
    """The FUSE server: one thread reading requests from the connection's descriptor and answering each."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.nodes: dict[int, _Node] = {ROOT: _Node(ROOT, "", None)}
        self.next_ino = ROOT + 1
        self.failures: list[Exception] = []  # what a request raised (answered EIO), for a test to look at
        self.thread = threading.Thread(target=self._serve, name="modeless-fs", daemon=True)

    # ------------------------------------------------------------ replies
    def _reply(self, unique: int, payload: bytes = b"", error: int = 0) -> None:
        with contextlib.suppress(OSError):  # the mount went away meanwhile
            os.write(self.fd, OUT_HEADER.pack(OUT_HEADER.size + len(payload), -error, unique) + payload)

    def _attr(self, node: _Node) -> bytes:
        now = int(time.time())
        size = len(node.data) if node.data is not None else 0
        mode, nlink = (DIR_MODE, 2) if node.data is None else (FILE_MODE, 1)
        return ATTR.pack(node.ino, size, (size + 511) // 512, now, now, now, 0, 0, 0, mode, nlink, 0, 0, 0, 4096, 0)

    def _entry(self, node: _Node) -> bytes:  # fuse_entry_out, no caching: every stat asks again
        return struct.pack("<QQQQII", node.ino, 0, 0, 0, 0, 0) + self._attr(node)

    def _named(self, name: str) -> _Node | None:
        return next((n for n in self.nodes.values() if n.data is not None and n.name == name), None)

    # ------------------------------------------------------------ the loop
    def _serve(self) -> None:
        """Answer requests until the connection ends, then close its descriptor: only this thread reads it, so
        only this thread may close it (a descriptor closed under a blocked read would leave the read waiting)."""
        try:
            self._answer_until_unmounted()
        finally:
            os.close(self.fd)

    def _answer_until_unmounted(self) -> None:
        while True:
            try:
                request = os.read(self.fd, 1 << 18)
            except OSError as exc:
                if exc.errno in (errno.EINTR, errno.EAGAIN, errno.ENOENT):  # ENOENT: an interrupted request
                    continue
                return  # ENODEV: unmounted
            if not request:
                return
            _, opcode, unique, nodeid, *_ = IN_HEADER.unpack_from(request)
            try:
                self._handle(opcode, unique, nodeid, request[IN_HEADER.size:])
            except Exception as exc:  # answered, never fatal: the kernel waits for every reply
                # A thread that died here would leave this request, and every later one, waiting in the kernel
                # uninterruptibly (even SIGKILL waits): the test process's own teardown would hang.
                self.failures.append(exc)
                self._reply(unique, error=errno.EIO)

    def _handle(self, opcode: int, unique: int, nodeid: int, body: bytes) -> None:
        node = self.nodes.get(nodeid)
        if opcode in (FORGET, BATCH_FORGET, INTERRUPT):
            return  # no reply
        if opcode == INIT:
            _major, minor = struct.unpack_from("<II", body)
            # major, minor, max_readahead, flags, max_background, congestion_threshold, max_write, time_gran,
            # max_pages, map_alignment, flags2, max_stack_depth, unused[6]
            out = struct.pack("<IIIIHHIIHHII24x", 7, min(minor, 31), 65536, 0, 16, 12, 65536, 1, 0, 0, 0, 0)
            self._reply(unique, out)
        elif opcode == DESTROY:
            self._reply(unique)
        elif node is None:
            self._reply(unique, error=errno.ENOENT)
        elif opcode == LOOKUP:
            found = self._named(os.fsdecode(body.split(b"\0")[0]))
            self._reply(unique, self._entry(found) if found else b"", 0 if found else errno.ENOENT)
        elif opcode == GETATTR:
            self._reply(unique, struct.pack("<QII", 0, 0, 0) + self._attr(node))
        elif opcode == SETATTR:  # a mode is taken and forgotten (vfat's quiet); a size truncates
            valid, _, _, size = struct.unpack_from("<IIQQ", body)
            if valid & FATTR_SIZE and node.data is not None:
                del node.data[size:]
                node.data.extend(b"\0" * (size - len(node.data)))
            self._reply(unique, struct.pack("<QII", 0, 0, 0) + self._attr(node))
        elif opcode == CREATE:
            name = os.fsdecode(body[16:].split(b"\0")[0])
            created = self._named(name)
            if created is None:
                created = self.nodes[self.next_ino] = _Node(self.next_ino, name, bytearray())
                self.next_ino += 1
            self._reply(unique, self._entry(created) + struct.pack("<QII", 0, 0, 0))
        elif opcode in (OPEN, OPENDIR):
            self._reply(unique, struct.pack("<QII", 0, 0, 0))
        elif opcode == READ and node.data is not None:
            _, offset, size = struct.unpack_from("<QQI", body)
            self._reply(unique, bytes(node.data[offset:offset + size]))
        elif opcode == WRITE and node.data is not None:
            _, offset, size = struct.unpack_from("<QQI", body)
            data = body[40:40 + size]
            node.data.extend(b"\0" * max(0, offset - len(node.data)))
            node.data[offset:offset + len(data)] = data
            self._reply(unique, struct.pack("<II", len(data), 0))
        elif opcode == READDIR:
            _, offset, size = struct.unpack_from("<QQI", body)
            out = b""
            files = [n for n in self.nodes.values() if n.data is not None]
            for index, entry in enumerate(files[offset:], start=offset + 1):
                name = os.fsencode(entry.name)
                dirent = struct.pack("<QQII", entry.ino, index, len(name), 8) + name
                dirent += b"\0" * (-len(dirent) % 8)
                if len(out) + len(dirent) > size:
                    break
                out += dirent
            self._reply(unique, out)
        elif opcode == UNLINK:
            gone = self._named(os.fsdecode(body.split(b"\0")[0]))
            if gone is not None:
                del self.nodes[gone.ino]
            self._reply(unique, error=0 if gone else errno.ENOENT)
        elif opcode == RENAME:
            old, new = body[8:].split(b"\0")[:2]
            moving = self._named(os.fsdecode(old))
            if moving is None:
                self._reply(unique, error=errno.ENOENT)
                return
            replaced = self._named(os.fsdecode(new))
            if replaced is not None:
                del self.nodes[replaced.ino]
            moving.name = os.fsdecode(new)
            self._reply(unique)
        elif opcode == LINK:
            self._reply(unique, error=errno.EPERM)  # vfat has no hard links
        elif opcode == STATFS:
            self._reply(unique, struct.pack("<QQQQQIII4x24x", 1024, 1000, 1000, 100, 90, 4096, 255, 4096))
        elif opcode in (RELEASE, RELEASEDIR, FLUSH, FSYNC):
            self._reply(unique)
        else:
            self._reply(unique, error=errno.ENOSYS)


@contextlib.contextmanager
def modeless_mount(mount_point: Path, *, device: Path = Path("/dev/fuse")) -> Iterator[Path]:
    """:class:`ModelessServer` mounted at ``mount_point`` (made here), unmounted after; skips where it cannot.

    ``device`` is the kernel's FUSE device; a test of this skip names another.
    """
    if os.geteuid() != 0 or not device.exists():
        pytest.skip(f"mounting a FUSE file system needs root and {device}")
    try:  # a container may list the device and refuse it (device cgroup, nodev): skipped as if absent
        fd = os.open(device, os.O_RDWR)
    except OSError as exc:
        pytest.skip(f"cannot open {device} here: {exc.strerror}")
    libc = ctypes.CDLL(None, use_errno=True)
    mount_point.mkdir()
    options = f"fd={fd},rootmode=40000,user_id=0,group_id=0,allow_other".encode()
    if libc.mount(b"modeless", str(mount_point).encode(), b"fuse.modeless", 0, options) != 0:
        os.close(fd)
        pytest.skip(f"cannot mount a FUSE file system here: {os.strerror(ctypes.get_errno())}")
    server = ModelessServer(fd)  # owns fd from here: its thread closes it when the connection ends
    server.thread.start()
    try:
        yield mount_point
    finally:
        # MNT_FORCE aborts the FUSE connection (the server's read ends with ENODEV) even while a file on the mount
        # is still open, say by a process a failed test left behind; MNT_DETACH alone would keep the connection
        # for that file, and the server waiting, until it is closed.
        libc.umount2(str(mount_point).encode(), MNT_FORCE | MNT_DETACH)
        server.thread.join(10)
        if server.thread.is_alive():
            raise RuntimeError(f"the FUSE server at {mount_point} still serves after its forced unmount")
