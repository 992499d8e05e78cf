"""The agent–verifier contract (protocol v1), written once for both sides; pure (stdlib and cryptography)."""
