"""The agent–verifier contract (protocol v1), written once for both sides.

Pure: the standard library and ``cryptography`` only, no I/O. The agent and the
verifier both import it, so the bytes one signs are the bytes the other checks,
the hash one chains is the hash the other recomputes, and a problem one answers
is the problem the other recognises. If the contract must change, it changes
here, and both sides follow at build time.

Modules:

* :mod:`protocol.endpoints`: paths and headers.
* :mod:`protocol.wire`: canonical JSON, strict JSON parsing (depth, duplicate keys).
* :mod:`protocol.signing`: canonical request bytes, device signatures.
* :mod:`protocol.audit`: the audit event hash chain rule.
* :mod:`protocol.templates`: template wire formats (ISO/IEC 19794-2 envelope) and their bounds.
* :mod:`protocol.face_template`: the face embedding record (``face-embedding``).
* :mod:`protocol.tls`: what both ends of TLS must agree on (cipher string, ALPN).
* :mod:`protocol.problems`: the registry of problem types (slug, status, error class, fix).
* :mod:`protocol.messages`: typed requests and answers.
* :mod:`protocol.redaction`: the logs' last line of defence, one rule for both sides' log processors.
"""

VERSION = "v1"
