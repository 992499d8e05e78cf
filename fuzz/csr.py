"""Fuzz the verifier's checks of a certificate request (verifier.pki.parse_csr) and the issuing that follows.

What parse_csr accepts is signed by a development CA made once per process
(CertificateAuthority.issue_device_certificate), as EST simpleenroll does.
Typed error: CSRError.
"""

from __future__ import annotations

import sys

from verifier.pki import CertificateAuthority, CSRError, parse_csr

_ca: CertificateAuthority | None = None


def TestOneInput(data: bytes) -> None:
    global _ca
    try:
        parse_csr(data)
    except CSRError:
        return
    if _ca is None:
        _ca = CertificateAuthority.create()
    _ca.issue_device_certificate(data, "fuzz-device", 1.0)


if __name__ == "__main__":
    from fuzz.common import main

    main("csr", TestOneInput, sys.argv)
