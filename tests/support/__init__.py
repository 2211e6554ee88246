"""Test-support code: real servers on loopback, emulators, canaries."""
