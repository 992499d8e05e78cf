"""The reference verifier: mTLS + HTTP/2 on 8443, EST enrollment, device registry."""

__version__ = "0.1.0"
