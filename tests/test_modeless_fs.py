"""The modeless FUSE fixture itself (tests/modeless_fs.py): it must fail a request, never stop answering.

A request the server cannot handle must still be answered: the kernel waits for
every reply, and a process waiting on a FUSE reply cannot be interrupted short of
SIGKILL, so a server thread that died on one odd request hangs every later use of
the mount, the test process's own teardown included.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest


def _in_a_child(probe: str, mount: Path, after: str) -> tuple[str, str]:
    """``probe`` (Python, the mount as argv[1]) run in a child, so a server that stopped answering hangs the
    child, not pytest: its output and error."""
    child = subprocess.Popen([sys.executable, "-c", probe, str(mount)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        return child.communicate(timeout=60)
    except subprocess.TimeoutExpired:  # not waited for: it stays in the kernel until the teardown aborts the mount
        child.kill()
        pytest.fail(f"the FUSE server stopped answering {after}")


def test_a_name_that_is_not_utf8_is_answered_not_fatal(modeless_filesystem: Path) -> None:
    """Looked up in a child process (so a server that stopped answering hangs the child, not pytest)."""
    probe = (
        "import os, sys\n"
        "try:\n"
        "    os.stat(os.fsencode(sys.argv[1]) + b'/\\xff')\n"
        "except FileNotFoundError:\n"
        "    print('ENOENT')\n"
    )
    out, err = _in_a_child(probe, modeless_filesystem, "after a name that is not UTF-8")
    assert out.strip() == "ENOENT", err
    (modeless_filesystem / "after").write_bytes(b"x")  # and the mount still serves
    assert (modeless_filesystem / "after").read_bytes() == b"x"


def test_a_request_the_server_fails_on_is_answered_eio(modeless_filesystem: Path) -> None:
    """A write a petabyte in (the server would have to hold it in memory): its MemoryError is answered EIO."""
    probe = (
        "import os, sys\n"
        "fd = os.open(os.path.join(sys.argv[1], 'far'), os.O_WRONLY | os.O_CREAT, 0o600)\n"
        "try:\n"
        "    os.pwrite(fd, b'x', 1 << 50)\n"
        "except OSError as exc:\n"
        "    print(exc.errno)\n"
    )
    out, err = _in_a_child(probe, modeless_filesystem, "after a request it failed on")
    assert out.strip() == str(errno.EIO), err
    assert os.listdir(modeless_filesystem) == ["far"]  # and the mount still serves


def test_a_fuse_device_that_cannot_be_opened_skips_not_errors(tmp_path: Path) -> None:
    """A container may list /dev/fuse yet refuse its opening (a device cgroup; here: a device node on a ``nodev``
    mount, which not even root may open). The fixture must skip there, as it does without /dev/fuse."""
    from tests.modeless_fs import modeless_mount

    mount, umount = shutil.which("mount"), shutil.which("umount")
    if mount is None or umount is None:
        pytest.skip("no mount command here")
    devices = tmp_path / "dev"
    devices.mkdir()
    mounted = subprocess.run([mount, "-t", "tmpfs", "-o", "nodev,size=1m", "tmpfs", str(devices)],
                             capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        os.mknod(devices / "fuse", 0o600 | stat.S_IFCHR, os.makedev(10, 229))
        with pytest.raises(pytest.skip.Exception), modeless_mount(tmp_path / "mount", device=devices / "fuse"):
            pass
    finally:
        subprocess.run([umount, str(devices)], check=True)


def test_teardown_ends_the_server_while_a_file_on_the_mount_is_still_open(tmp_path: Path) -> None:
    """A file left open on the mount (a process a failed test left behind, here this one) must not keep the
    server's thread reading past the teardown: the unmount aborts the connection, and the thread, the only
    reader of the FUSE descriptor, ends and closes it."""
    import threading

    from tests.modeless_fs import modeless_mount

    with modeless_mount(tmp_path / "held") as mount_point:
        held = os.open(mount_point / "open-file", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        assert not [t for t in threading.enumerate() if t.name == "modeless-fs"]
        with pytest.raises(OSError) as aborted:  # the open file's connection is gone, not served
            os.pwrite(held, b"x", 0)
        assert aborted.value.errno in (errno.ENOTCONN, errno.ENODEV, errno.EIO)
    finally:
        with contextlib.suppress(OSError):  # its flush fails (ENOTCONN); the descriptor is released all the same
            os.close(held)
