"""Real servers on loopback for `smtpctl demo` and the test suite.

These are product code, not mocks: an aiosmtpd relay with real TLS (a trustme CA), real
AUTH mechanisms and a relay policy, and an RFC 6749 token endpoint.  The demo runs them so a
new user sees the whole flow with no external service; the tests use the same servers (and
add fault-injecting ones of their own in tests/support/).  They bind to loopback only.
"""
