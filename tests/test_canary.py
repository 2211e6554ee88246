"""The leak guard must see a canary wherever a credential can hide in SMTP traffic."""

from __future__ import annotations

import base64

import pytest

from tests.support.canary import PASSWORD, canary, find_canary


@pytest.mark.parametrize("user", ["", "a", "ab", "abc", "probe@interop.test", "u@x.tes"])
def test_password_inside_auth_plain_payload_at_every_alignment(user: str) -> None:
    # Regression: a username whose length was a multiple of 3 hid the password.
    payload = base64.b64encode(f"\0{user}\0{PASSWORD}".encode()).decode()
    assert find_canary(payload) == PASSWORD


@pytest.mark.parametrize("user", ["", "a", "ab", "abc"])
def test_token_inside_xoauth2_payload(user: str) -> None:
    token = canary("tok")
    payload = base64.b64encode(f"user={user}\x01auth=Bearer {token}\x01\x01".encode()).decode()
    assert find_canary(payload) == token


def test_clean_text_has_no_canary() -> None:
    assert find_canary("AUTH PLAIN ******\r\n235 2.7.0 Authentication successful") is None
