"""What the ``cryptography`` library raises reading a certificate or a certificate request it loaded.

Why in ``protocol``: both ends read the other's X.509 (the agent the verifier's EST
answers and server certificate, the verifier the agent's PKCS#10 requests), and
cryptography parses some parts only when asked, raising exceptions that are not
ValueErrors (an extension twice, a general name type it lacks, a key on a curve it
lacks, a version it does not know). One list, so that neither side lets one of
them escape untyped where the other catches it (the verifier missed
``UnsupportedGeneralNameType`` in a request's subject alternative name: a 500).
Catch it only around cryptography's calls: KeyError is on it (a name attribute
of an ASN.1 type no string has, tag 13, raises one when read).

A name value out of its X.520 bounds (an empty or 65-byte CN, a three-letter
country) is only a UserWarning when read from DER, printed at every read: read
under :func:`bounds_enforced`, it is raised, and UserWarning is on the list.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

X509_READ_FAULTS: tuple[type[Exception], ...] = (
    ValueError,
    TypeError,
    KeyError,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
    x509.InvalidVersion,
    UnsupportedAlgorithm,
    UserWarning,  # raised only under bounds_enforced
)

# How cryptography words a name attribute out of its length bounds.
BOUNDS_WARNING = "Attribute's length must be"


@contextmanager
def bounds_enforced() -> Iterator[None]:
    """Reads of X.509 names in this block raise a value out of its bounds (a UserWarning) instead of printing it.

    Only that message is made an error, so another thread's warning in the block is shown as usual. The filters
    are the process's: use it from one thread (each end's event loop, or a command's main thread)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=BOUNDS_WARNING, category=UserWarning)
        yield


__all__ = ["BOUNDS_WARNING", "X509_READ_FAULTS", "bounds_enforced"]
