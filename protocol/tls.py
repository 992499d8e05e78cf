"""What both ends of a TLS connection must agree on (DESIGN.md invariant 2).

TLS 1.2 suites: ECDHE key exchange with an AEAD cipher, nothing else; the TLS
1.3 suites (all AEAD, all (EC)DHE) stay at OpenSSL's defaults. HTTP/2 by ALPN.
The contexts themselves (files, policy checks) are each side's own.
"""

from __future__ import annotations

import ssl

TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!SHA1"
ALPN_H2 = "h2"
MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
