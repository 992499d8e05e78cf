"""USB fingerprint readers through libfprint (the library behind fprintd), via GObject introspection.

libfprint is optional: without PyGObject or Debian's ``gir1.2-fprint-2.0`` the
agent still runs serial modules and cameras, and :func:`unavailable_reason`
says what to install. Every libfprint call runs in one thread that owns GLib's
default main context (:mod:`drivers.fprint.loop`).
"""

from __future__ import annotations

import functools

INSTALL_HINT = (
    "install libfprint for USB fingerprint readers: apt-get install libfprint-2-2 gir1.2-fprint-2.0 "
    "(to build PyGObject: libgirepository1.0-dev libcairo2-dev pkg-config), then "
    "pip install 'capture-agent[usb]'"
)


@functools.cache
def unavailable_reason() -> str:
    """Empty when libfprint can be used from Python; otherwise what is missing and how to add it."""
    try:
        import gi
    except ImportError:
        return f"PyGObject is not installed; {INSTALL_HINT}"
    try:
        gi.require_version("FPrint", "2.0")
        from gi.repository import FPrint  # noqa: F401
    except (ValueError, ImportError) as exc:
        return f"libfprint's introspection data is missing ({exc}); {INSTALL_HINT}"
    return ""


def available() -> bool:
    return not unavailable_reason()
