"""End-to-end tests: real codex binaries and real client SDKs, run by `nox -s e2e clients`."""
