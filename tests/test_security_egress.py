"""The egress guard's defaults and the operator's flags (issue 9, medium: "the deny list
misses cloud metadata addresses and IPv4-embedding IPv6 forms; the operator has no flags").
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from pathlib import Path

import pytest
import yaml

from reconciler.cli.main import main
from reconciler.cli.opsecurity import add_security_options, security_settings
from reconciler.devservers.smtp import RelayServer
from reconciler.probe import run_probe
from reconciler.probe.egress import EgressPolicy
from tests.support import canary
from tests.support.smtp_servers import make_spec, password_creds

API = "smtp.reconciler.dev/v1alpha1"
USER = "user@example.test"

DENIED = [
    "169.254.169.254",  # AWS, GCP, Azure, Oracle, OpenStack, DigitalOcean, Hetzner
    "100.100.100.200",  # Alibaba Cloud
    "168.63.129.16",  # Azure wireserver
    "fd00:ec2::254",  # AWS over IPv6
    "fd20:ce::254",  # GCP over IPv6
    "fe80::a9fe:a9fe",  # link-local
    "::ffff:169.254.169.254",  # IPv4-mapped
    "::ffff:100.100.100.200",
    "64:ff9b::a9fe:a9fe",  # NAT64 well-known prefix
    "64:ff9b::6464:64c8",  # NAT64 of 100.100.100.200
    "64:ff9b:1::a9fe:a9fe",  # NAT64 local-use prefix
    "::a9fe:a9fe",  # IPv4-compatible (::/96)
    "::ab3f:8110",  # IPv4-compatible of 168.63.129.16
    "2002:a9fe:a9fe::1",  # 6to4 carrying 169.254.169.254
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    "0.0.0.0", "::", "224.0.0.1", "ff02::1",
]


@pytest.mark.parametrize("address", DENIED)
def test_metadata_and_embedded_forms_are_denied(address: str) -> None:
    for policy in (EgressPolicy(), EgressPolicy(allow_loopback=False)):
        assert policy.refusal(address) is not None, address


@pytest.mark.parametrize("address", ["::ffff:127.0.0.1", "64:ff9b::7f00:1", "::127.0.0.1",
                                     "2002:7f00:1::1"])
def test_embedded_loopback_follows_the_loopback_rule(address: str) -> None:
    assert EgressPolicy(allow_loopback=False).refusal(address) is not None


@pytest.mark.parametrize("address", ["93.184.216.34", "10.1.2.3", "2606:4700::1111",
                                     "64:ff9b::5db8:d822", "::ffff:93.184.216.34"])
def test_ordinary_relays_are_allowed(address: str) -> None:
    assert EgressPolicy(allow_loopback=False).refusal(address) is None


def operator_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--allow-loopback", action="store_true")
    add_security_options(parser)
    return parser.parse_args(list(argv))


def test_operator_flags_allow_and_deny_networks() -> None:
    _, egress = security_settings(operator_args())
    assert egress.refusal("127.0.0.1") is not None  # no loopback in a pod by default
    assert egress.refusal("10.0.0.5") is None
    _, egress = security_settings(operator_args(
        "--deny-egress", "10.0.0.0/8", "--allow-egress", "169.254.170.2/32",
        "--allow-egress", "fd00:ec2::/32"))
    assert egress.refusal("10.0.0.5") is not None
    assert egress.refusal("169.254.170.2") is None  # e.g. the ECS agent, allowed on purpose
    assert egress.refusal("169.254.169.254") is not None
    assert egress.refusal("64:ff9b::a9fe:aa02") is None  # the same, through NAT64
    assert egress.refusal("fd00:ec2::254") is None
    with pytest.raises(ValueError, match="--allow-egress/--deny-egress"):
        security_settings(operator_args("--deny-egress", "not-a-network"))
    with pytest.raises(ValueError, match="exact variable name"):
        security_settings(operator_args("--allow-env-secret", "SMTP_*"))


async def test_a_relay_behind_a_denied_network_is_never_connected() -> None:
    with RelayServer(mode="starttls") as relay:
        _, egress = security_settings(operator_args("--allow-loopback", "--deny-egress",
                                                    "127.0.0.0/8"))
        v = await run_probe(make_spec(relay.port), password_creds(relay), policy=egress)
        assert (v.passed, v.reason) == (False, "EgressDenied")
        assert relay.connections == 0


# --- the CLI's options: the same two on test, apply and reconcile ---------------------------


def _relays(tmp_path: Path, *relays: tuple[str, RelayServer]) -> Path:
    docs = []
    for name, relay in relays:
        ca = tmp_path / f"{name}-ca.pem"
        ca.write_text(relay.ca_pem)
        docs.append({"apiVersion": API, "kind": "ExternalSmtp",
                     "metadata": {"name": name, "namespace": "default"},
                     "spec": {"host": relay.host, "port": relay.port, "startTLS": True,
                              "authentication": "UsernamePassword", "username": USER,
                              "passwordFrom": {"file": str(tmp_path / "pw")},
                              "tls": {"caBundleFrom": {"file": str(ca)},
                                      "serverName": "localhost"},
                              "connectionTest": {"timeoutSeconds": 5, "checkRelay": False}}})
    (tmp_path / "pw").write_text(canary.PASSWORD + "\n")
    (tmp_path / "pw").chmod(0o600)
    path = tmp_path / "relays.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    return path


def smtpctl(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    canary.assert_no_canary(out.getvalue(), err.getvalue(), where="smtpctl output")
    return code, out.getvalue(), err.getvalue()


def reasons(stdout: str) -> dict[str, str]:
    return {i["metadata"]["name"]: (i.get("result") or {}).get("reason") or i.get("reason")
            for i in json.loads(stdout)["items"]}


def test_cli_test_denies_and_allows_networks(tmp_path: Path) -> None:
    """`smtpctl test --deny-egress NET` never connects to a relay in NET; `--allow-egress`
    carves an exception out of a denied network (allow is judged first)."""
    with (RelayServer(mode="starttls", users={USER: canary.PASSWORD}) as one,
          RelayServer(mode="starttls", host="127.0.0.2", users={USER: canary.PASSWORD}) as two):
        manifest = _relays(tmp_path, ("one", one), ("two", two))
        code, _, _ = smtpctl("test", "-f", str(manifest))
        assert code == 0 and one.connections == 1 and two.connections == 1
        code, out, _ = smtpctl("test", "-f", str(manifest), "-o", "json",
                               "--deny-egress", "127.0.0.0/8", "--allow-egress", "127.0.0.2/32")
        assert code == 1
        assert "EgressDenied" in json.dumps(json.loads(out)["items"][0])
        assert one.connections == 1  # not one more
        assert two.connections == 2 and json.loads(out)["items"][1]["passed"] is True


@pytest.mark.parametrize("command", ["apply", "reconcile"])
def test_cli_apply_and_reconcile_take_the_same_options(tmp_path: Path, command: str) -> None:
    state = tmp_path / "state"
    with RelayServer(mode="starttls", users={USER: canary.PASSWORD}) as relay:
        manifest = _relays(tmp_path, ("one", relay))
        if command == "reconcile":  # the state holds the manifest; reconcile re-tests it
            assert smtpctl("apply", "-f", str(manifest), "--state", str(state))[0] == 0
            assert relay.connections == 1
            argv = ["reconcile", "--force", "--state", str(state)]
        else:
            argv = ["apply", "-f", str(manifest), "--state", str(state)]
        before = relay.connections
        code, out, err = smtpctl(*argv, "--deny-egress", "127.0.0.1/32")
        assert code == 1, (out, err)
        assert "EgressDenied" in out + err
        assert relay.connections == before
        code, out, err = smtpctl(*argv, "--deny-egress", "not-a-network")
        assert code == 2 and "--allow-egress/--deny-egress" in err, (out, err)


def test_cli_test_refuses_a_malformed_network(tmp_path: Path) -> None:
    code, _, err = smtpctl("test", "-f", str(tmp_path / "none.yaml"), "--allow-egress", "x/99")
    assert code == 2 and "--allow-egress/--deny-egress" in err
