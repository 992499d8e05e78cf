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
"""

from __future__ import annotations

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
)

__all__ = ["X509_READ_FAULTS"]
