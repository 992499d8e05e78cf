"""A sealed print replaced or removed while the agent reads it: the id and the print stay one print's.

The window is made deterministic, not raced: the store's folder is a path whose first read of a print file
is followed at once by the real change (the store's own ``save`` of another print for the same subject and
reader, as an enrolment finishing meanwhile does, or its ``remove``, as `capture-agent forget` does), before
the reader gets the bytes back. Real files on disk, real AES-GCM; nothing of the store is mocked.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from agent.devices.prints import SensorPrintStore

KEK = "print-reads-test-kek-" + "k" * 32


def _folder_changed_after_first_read(folder: Path, change: Callable[[], object]) -> Path:
    """``folder`` as a path whose children run ``change`` right after the first read of a ``.print`` file."""
    done: list[bool] = []

    class ChangedAfterRead(type(Path())):  # type: ignore[misc]  # Path's concrete class, as 3.11 subclasses it
        def read_bytes(self) -> bytes:
            data = super().read_bytes()
            if self.suffix == ".print" and not done:
                done.append(True)
                change()
            return data

    return ChangedAfterRead(folder)


def test_a_print_replaced_between_reads_keeps_its_own_id(tmp_path: Path) -> None:
    """ana's print A is being read when an enrolment of ana on usb0 replaces it with print B: what the session
    gets is A with A's id (so the hash it asserts names the print the sensor matched), not B's id with A's bytes.

    Before, the print was read, then the file again for the id: B's id came back with A's bytes."""
    plain = SensorPrintStore(tmp_path / "prints", KEK)
    id_a = plain.save("usb0", "ana", b"print A")
    ids_b: list[str] = []

    def enrolment_finishes() -> None:
        ids_b.append(plain.save("usb0", "ana", b"print B"))

    store = SensorPrintStore(_folder_changed_after_first_read(tmp_path / "prints", enrolment_finishes), KEK)

    got = store.load_with_id("usb0", "ana")

    assert ids_b and ids_b[0] != id_a  # the replacement did happen inside the read
    assert got == (id_a, b"print A")
    assert plain.load_with_id("usb0", "ana") == (ids_b[0], b"print B")  # and the next read sees B whole


def test_a_print_forgotten_during_the_read_is_the_print_read(tmp_path: Path) -> None:
    """`capture-agent forget` erases ana's print just after the session read it: the session has the print it
    read, with its id (the next read finds none, a typed error).

    Before, the second read for the id found no file: a FileNotFoundError out of the session, untyped."""
    plain = SensorPrintStore(tmp_path / "prints", KEK)
    id_a = plain.save("usb0", "ana", b"print A")
    store = SensorPrintStore(
        _folder_changed_after_first_read(tmp_path / "prints", lambda: plain.remove("usb0", "ana")), KEK
    )

    assert store.load_with_id("usb0", "ana") == (id_a, b"print A")
    assert plain.snapshot("usb0", "ana") is None
