"""swaks, the reference client, against the real Postfix + Dovecot peer.

These pin down how the peer itself behaves (so a probe failure in test_interop_probe.py
is the probe's fault, not the fixture's) and give the swaks column of the interop matrix.
"""

from __future__ import annotations

import pytest

from reconciler.secret import Secret as _Secret
from tests.support import canary
from tests.support.canary import assert_no_canary, assert_no_canary_in_tree
from tests.support.postfix import (
    PostfixPeer,
    assert_secret_absent,
    postfix_peer,
    run_swaks,
    swaks_ready,
)

pytestmark = [pytest.mark.postfix, pytest.mark.usefixtures("swaks_ready")]
__all__ = ["postfix_peer", "swaks_ready"]  # session fixtures, imported for pytest


def _checked(result_transcript: str) -> None:
    assert_no_canary(result_transcript, where="swaks transcript")
    assert_secret_absent(result_transcript, canary.PASSWORD, "swaks transcript")


def test_starttls_plain_passes(postfix_peer: PostfixPeer) -> None:
    peer = postfix_peer
    r = run_swaks(peer.host, peer.starttls_port, tls="starttls", auth="PLAIN",
                  user=peer.user, password=peer.password, ca_file=peer.ca_file)
    _checked(r.transcript)
    assert r.passed, r.verdict
    assert "235 2.7.0 Authentication successful" in r.transcript
    assert "250 2.1.5 Ok" in r.transcript  # RCPT accepted: the relay check passed
    assert "DATA" not in r.transcript


def test_login_only_listener_offers_only_login(postfix_peer: PostfixPeer) -> None:
    peer = postfix_peer
    r = run_swaks(peer.host, peer.ports["login_only"], tls="starttls", auth="LOGIN",
                  user=peer.user, password=peer.password, ca_file=peer.ca_file)
    _checked(r.transcript)
    assert r.passed, r.verdict
    assert "AUTH LOGIN" in r.transcript
    assert "250-AUTH LOGIN\n" in r.transcript.replace("<~  ", "")


def test_implicit_tls_passes(postfix_peer: PostfixPeer) -> None:
    peer = postfix_peer
    r = run_swaks(peer.host, peer.implicit_port, tls="implicit", auth="PLAIN",
                  user=peer.user, password=peer.password, ca_file=peer.ca_file)
    _checked(r.transcript)
    assert r.passed, r.verdict


def test_wrong_password_fails_auth(postfix_peer: PostfixPeer) -> None:
    peer = postfix_peer
    r = run_swaks(peer.host, peer.starttls_port, tls="starttls", auth="PLAIN",
                  user=peer.user, password=_Secret("not-the-password"), ca_file=peer.ca_file)
    assert r.exit_code == 28, r.verdict
    assert "535 5.7.8" in r.transcript


def test_send_as_mismatch_is_rejected_at_rcpt(postfix_peer: PostfixPeer) -> None:
    """Postfix's default smtpd_delay_reject=yes: the sender check answers at RCPT TO."""
    peer = postfix_peer
    r = run_swaks(peer.host, peer.starttls_port, tls="starttls", auth="PLAIN",
                  user=peer.user, password=peer.password, ca_file=peer.ca_file,
                  sender=peer.other_sender)
    _checked(r.transcript)
    assert r.exit_code == 24, r.verdict
    assert "553 5.7.1" in r.transcript and "not owned by user" in r.transcript


def test_plain_listener_refuses_starttls_and_swaks_sends_no_auth(
    postfix_peer: PostfixPeer,
) -> None:
    peer = postfix_peer
    r = run_swaks(peer.host, peer.plain_port, tls="starttls", auth="PLAIN",
                  user=peer.user, password=peer.password, ca_file=peer.ca_file)
    _checked(r.transcript)
    assert r.exit_code == 29, r.verdict
    assert "did not advertise STARTTLS" in r.transcript
    assert not r.sent_auth


def test_plain_listener_without_tls_takes_auth_in_the_clear(postfix_peer: PostfixPeer) -> None:
    """The bait works: swaks without -tls sends the password in plaintext and passes."""
    peer = postfix_peer
    r = run_swaks(peer.host, peer.plain_port, tls="none", auth="PLAIN",
                  user=peer.user, password=peer.password)
    _checked(r.transcript)  # --auth-hide-password replaced it in the transcript
    assert r.passed, r.verdict
    assert r.sent_auth


def test_unauthenticated_relay_is_denied(postfix_peer: PostfixPeer) -> None:
    peer = postfix_peer
    # A sender nobody owns: an owned one is refused earlier ("553 ... not logged in").
    r = run_swaks(peer.host, peer.plain_port, tls="none", sender=peer.other_sender)
    assert r.exit_code == 24, r.verdict
    assert "554 5.7.1" in r.transcript and "Relay access denied" in r.transcript


def test_unknown_ca_fails_tls_verification(postfix_peer: PostfixPeer) -> None:
    peer = postfix_peer
    r = run_swaks(peer.host, peer.starttls_port, tls="starttls", auth="PLAIN",
                  user=peer.user, password=peer.password, ca_file=None)
    assert r.exit_code == 29, r.verdict
    assert not r.sent_auth


def test_peer_logs_hold_no_secret(postfix_peer: PostfixPeer) -> None:
    """After successful and failed logins, Postfix's and Dovecot's logs have no canary."""
    peer = postfix_peer
    for password in (peer.password, _Secret("wrong")):
        run_swaks(peer.host, peer.starttls_port, tls="starttls", auth="LOGIN",
                  user=peer.user, password=password, ca_file=peer.ca_file)
    assert "authentication failed" in peer.logs()
    assert_no_canary_in_tree(peer.log_dir)
