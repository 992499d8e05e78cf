"""The verifier's TLS posture as an independent scanner (sslyze) sees it."""

from __future__ import annotations

import pytest

sslyze = pytest.importorskip("sslyze")  # a dev dependency: `make test` installs it

AEAD = ("GCM", "CHACHA20")
VERSIONS = {
    "ssl_2_0_cipher_suites": "SSLv2",
    "ssl_3_0_cipher_suites": "SSLv3",
    "tls_1_0_cipher_suites": "TLSv1.0",
    "tls_1_1_cipher_suites": "TLSv1.1",
    "tls_1_2_cipher_suites": "TLSv1.2",
    "tls_1_3_cipher_suites": "TLSv1.3",
}


def test_only_tls12_and_13_with_ecdhe_aead(verifier) -> None:
    from sslyze import ScanCommand, Scanner, ServerNetworkLocation, ServerScanRequest, ServerScanStatusEnum

    request = ServerScanRequest(
        server_location=ServerNetworkLocation(hostname="localhost", port=verifier.port, ip_address="127.0.0.1"),
        scan_commands={getattr(ScanCommand, name.upper()) for name in VERSIONS},
    )
    scanner = Scanner()
    scanner.queue_scans([request])
    (result,) = list(scanner.get_results())
    assert result.scan_status == ServerScanStatusEnum.COMPLETED, result.connectivity_error_trace
    accepted: dict[str, list[str]] = {}
    for attribute, version in VERSIONS.items():
        attempt = getattr(result.scan_result, attribute)
        assert attempt.result is not None, f"{version} scan failed: {attempt.error_trace}"
        accepted[version] = [s.cipher_suite.name for s in attempt.result.accepted_cipher_suites]
    assert {v for v, suites in accepted.items() if suites} == {"TLSv1.2", "TLSv1.3"}, accepted
    for suite in accepted["TLSv1.2"]:
        assert suite.startswith("TLS_ECDHE_") and any(a in suite for a in AEAD), suite
    for suite in accepted["TLSv1.3"]:
        assert any(a in suite for a in AEAD), suite
