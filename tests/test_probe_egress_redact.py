"""The egress guard and the redactor: units, plus the guard against real listeners."""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.devservers.smtp import RelayServer
from reconciler.probe import EgressPolicy, ProbeCredentials, run_probe
from reconciler.probe.redact import Redactor
from reconciler.secret import MASK, Secret
from tests.support import canary
from tests.support.smtp_servers import (  # noqa: F401
    make_spec,
    password_creds,
    relay_fixture,
    shared_ca_fixture,
)

Relay = Callable[..., RelayServer]


@pytest.mark.parametrize("address,permitted", [
    ("169.254.169.254", False), ("169.254.0.1", False), ("fe80::1", False),
    ("fd00:ec2::254", False), ("::ffff:169.254.169.254", False), ("0.0.0.0", False),
    ("::", False), ("224.0.0.1", False), ("127.0.0.1", True), ("::1", True),
    ("192.0.2.10", True), ("2001:db8::25", True), ("10.1.2.3", True),
])
def test_default_policy(address: str, permitted: bool) -> None:
    assert EgressPolicy().permits(address) is permitted


def test_policy_from_strings_and_allow_overrides() -> None:
    policy = EgressPolicy.from_strings(allow_loopback=False, deny=["10.0.0.0/8"],
                                       allow=["169.254.10.0/24"])
    assert not policy.permits("127.0.0.1")
    assert not policy.permits("10.9.9.9")
    assert policy.permits("169.254.10.5")  # explicitly allowed by the operator
    assert not policy.permits("169.254.169.254")  # the default deny list is kept
    assert ipaddress.ip_network("169.254.0.0/16") in policy.deny
    with pytest.raises(ValueError):
        EgressPolicy.from_strings(deny=["not-a-network"])


@pytest.mark.parametrize("host", ["169.254.169.254", "fd00:ec2::254"])
async def test_metadata_address_is_refused_before_connecting(host: str) -> None:
    v = await run_probe(make_spec(25, host=host, timeout=2), ProbeCredentials(
        password=Secret(canary.PASSWORD)))
    assert (v.passed, v.reason, v.stage) == (False, "EgressDenied", "resolve")
    assert v.transcript == ()
    assert v.retryable is False


async def test_loopback_can_be_denied_by_policy(relay: Relay) -> None:
    server = relay(mode="starttls")
    v = await run_probe(make_spec(server.port, host="localhost"), password_creds(server),
                        policy=EgressPolicy(allow_loopback=False))
    assert (v.passed, v.reason) == (False, "EgressDenied")
    assert server.connections == 0


async def test_deny_list_applies_after_dns_resolution(relay: Relay) -> None:
    server = relay(mode="starttls")
    policy = EgressPolicy(allow_loopback=False, deny=(ipaddress.ip_network("127.0.0.0/8"),))
    v = await run_probe(make_spec(server.port, host="localhost"), password_creds(server),
                        policy=policy)
    assert v.reason == "EgressDenied"
    assert server.connections == 0


async def test_unknown_host() -> None:
    v = await run_probe(make_spec(25, host="no-such-host.invalid", timeout=3),
                        ProbeCredentials(password=Secret(canary.PASSWORD)))
    assert (v.passed, v.reason, v.stage) == (False, "UnknownHost", "resolve")
    assert v.message.startswith("Unknown SMTP host")
    # a name that does not exist is not retried within the probe (only EAI_AGAIN is)
    assert v.details["attempts"] == 1 or "emporary" in v.message


def test_redactor_masks_values_and_base64_at_any_offset() -> None:
    r = Redactor()
    r.add(Secret(canary.PASSWORD))
    assert r(f"echo {canary.PASSWORD} end") == f"echo {MASK} end"
    for prefix in (b"", b"\0", b"\0u\0", b"\0user@example.test\0", b"ab"):
        blob = base64.b64encode(prefix + canary.PASSWORD.encode()).decode()
        out = r(f"501 bad {blob} x")
        assert canary.find_canary(out) is None, prefix
        assert out.startswith("501 bad ") and out.endswith(" x")


def test_redactor_leaves_ordinary_text_alone() -> None:
    r = Redactor()
    r.add("s3cr3t-value-123")
    text = "250-AUTH PLAIN LOGIN XOAUTH2\n250 8BITMIME"
    assert r(text) == text


def test_redactor_without_secrets_is_identity() -> None:
    assert Redactor()("AUTH PLAIN AGZvbwBiYXI=") == "AUTH PLAIN AGZvbwBiYXI="


@settings(max_examples=300, deadline=None)
@given(secret=st.binary(min_size=8, max_size=64),
       prefix=st.binary(max_size=40), suffix=st.binary(max_size=40))
def test_redactor_property_base64_at_any_offset(secret: bytes, prefix: bytes,
                                                suffix: bytes) -> None:
    r = Redactor()
    r.add(secret)
    blob = base64.b64encode(prefix + secret + suffix).decode()
    assert r(f"334 {blob}") == f"334 {MASK}"
