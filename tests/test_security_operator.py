"""The operator's tenant boundary, end to end (issue 9, critical finding): the real
``smtpctl operator`` process on the API emulator, two tenants, an attacker's relay and
token endpoint on loopback.

The operator's own environment and files hold canaries (a variable, its version key, a
stand-in for its ServiceAccount token).  Tenant A writes manifests that point
``passwordFrom``, ``clientSecretFrom`` and ``refreshTokenFrom`` at them and ``host`` /
``tokenEndpoint`` at servers A runs, which would accept exactly those canaries.  Tenant B
is honest.  The canaries must reach neither A's relay nor A's token endpoint, nor any
status, Event or Secret of any namespace, nor the operator's log; B is unaffected.
Before the source policy existed, A's relay received every one of them (and they were
published into A's ``smtp-active-relay`` Secret).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from reconciler.devservers.oauth import ClientConfig, OAuthServer
from reconciler.devservers.smtp import RelayServer
from tests.support import canary
from tests.support.kube_operator import (
    GROUP,
    VERSION,
    Cluster,
    OperatorProcess,
    cluster,
    condition,
    relay_spec,
    wait_for,
)

A, B = "team-a", "team-b"
HONEST = "user@example.test"
PUBLISHED = "smtp-active-relay"


def everything(c: Cluster) -> str:
    """Every object of every namespace the tenants could see (statuses, Events, Secrets),
    except tenant B's own Secrets (they hold B's password by design)."""
    assert c.kube.emu is not None
    objs: list[Any] = []
    for api, plural in ((f"{GROUP}/{VERSION}", "externalsmtps"),
                        (f"{GROUP}/{VERSION}", "oauth2providers"),
                        ("v1", "secrets"), ("v1", "events")):
        objs += [o for o in c.kube.call(c.kube.emu.list_objects, api, plural)
                 if not (plural == "secrets" and o["metadata"]["namespace"] == B)]
    return yaml.safe_dump(objs)


def attack(name: str, port: int, password_from: dict[str, Any]) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": port, "startTLS": True,
            "authentication": "UsernamePassword", "username": f"{name}@evil.test",
            "passwordFrom": password_from, "tls": {"verify": False}, "selected": True,
            "connectionTest": {"timeoutSeconds": 5, "checkRelay": False}}


def test_a_tenant_cannot_make_the_operator_leak_its_own_secrets(tmp_path: Path) -> None:
    env_canary = canary.canary("operator-env")
    key_canary = canary.canary("version-key")
    write_target = tmp_path / "operator-home" / ".profile"
    with cluster(tmp_path, namespaces=(A, B)) as c:
        # The operator runs in a simulated pod: its real ServiceAccount token (which our
        # RBAC lets read Secrets cluster-wide) is the file a tenant wants.
        sa_token = c.sa_dir / "token"
        token_value = sa_token.read_text().strip()
        users = {"steal-env@evil.test": env_canary, "steal-key@evil.test": key_canary,
                 "steal-file@evil.test": token_value}
        evil_idp = OAuthServer(clients=[ClientConfig("evil", token_value)],
                               rotate_refresh_tokens=True)
        with (RelayServer(mode="starttls", users=users) as evil_relay, evil_idp,
              RelayServer(mode="starttls", users={HONEST: canary.PASSWORD}) as honest):
            _attack_and_check(c, evil_relay, evil_idp, honest, sa_token, token_value,
                              env_canary, key_canary, write_target)


def _attack_and_check(c: Cluster, evil_relay: RelayServer, evil_idp: OAuthServer,
                      honest: RelayServer, sa_token: Path, token_value: str,
                      env_canary: str, key_canary: str, write_target: Path) -> None:
    # Tenant A: every reference points at the operator's own secrets.
    c.create_smtp(A, "steal-env", attack("steal-env", evil_relay.port,
                                         {"env": "OPERATOR_CANARY"}))
    c.create_smtp(A, "steal-key", attack("steal-key", evil_relay.port,
                                         {"env": "SMTPCTL_VERSION_KEY"}))
    c.create_smtp(A, "steal-file", attack("steal-file", evil_relay.port,
                                          {"file": str(sa_token)}))
    c.co.create_namespaced_custom_object(GROUP, VERSION, A, "oauth2providers", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "OAuth2Provider",
        "metadata": {"name": "evil-idp"},
        "spec": {"grantType": "RefreshToken", "clientId": "evil",
                 "clientSecretFrom": {"file": str(sa_token)},
                 "refreshTokenFrom": {"file": str(write_target)},
                 "tokenEndpoint": evil_idp.token_url}})
    oauth_spec = attack("steal-oauth", evil_relay.port, {"env": "X"})
    del oauth_spec["passwordFrom"]
    oauth_spec.update(authentication="OAuth2", oauth2ProviderRef={"name": "evil-idp"})
    c.create_smtp(A, "steal-oauth", oauth_spec)
    # Tenant B: an ordinary relay with a Secret of its own namespace.
    c.put_secret(B, "relay-password", {"password": canary.PASSWORD})
    c.put_secret(B, "relay-ca", {"ca.crt": honest.ca_pem})
    c.create_smtp(B, "mail", relay_spec(honest.port, user=HONEST))

    secrets = {"OPERATOR_CANARY": env_canary, "SMTPCTL_VERSION_KEY": key_canary}
    with OperatorProcess(c, "op", env=secrets) as op:
        wait_for("B Ready", lambda: condition(c.smtp(B, "mail"), "Ready").get("status")
                 == "True")
        for name in ("steal-env", "steal-key", "steal-file"):
            ready = wait_for(f"{name} refused", lambda n=name: (  # type: ignore[misc]
                condition(c.smtp(A, n), "Ready") or None))
            assert (ready["status"], ready["reason"]) == ("False",
                                                          "SecretReferenceNotAllowed"), ready
            assert condition(c.smtp(A, name), "Stalled").get("status") == "True"
        provider = wait_for("provider refused", lambda: condition(
            c.kube.emu.get_object(f"{GROUP}/{VERSION}", "oauth2providers", A,  # type: ignore[union-attr]
                                  "evil-idp"), "Ready") or None)
        assert provider["reason"] == "SecretReferenceNotAllowed", provider
        relay = wait_for("oauth relay blocked", lambda: condition(
            c.smtp(A, "steal-oauth"), "Ready") or None)
        assert relay["status"] == "False", relay
        messages = " ".join(str(condition(c.smtp(A, n), "Ready").get("message"))
                            for n in ("steal-env", "steal-key", "steal-file"))
        assert "--allow-env-secret OPERATOR_CANARY" in messages
        assert "--allow-file-secret-dir" in messages
        wait_for("B published", lambda: c.secret_data(B, PUBLISHED))
        assert c.secret_data(A, PUBLISHED) is None
        assert (c.secret_data(B, PUBLISHED) or {}).get("SMTP_PASSWORD") == canary.PASSWORD
        log = op.log_text()
    # Nothing reached the attacker, was written for it, or shows anywhere.
    assert evil_relay.connections == 0 and evil_relay.auth_attempts == []
    assert evil_idp.requests == []
    assert not write_target.exists()
    dump = everything(c)
    for value in (env_canary, key_canary, token_value):
        assert value not in dump and value not in log
    canary.assert_no_canary(dump, log, where="cluster objects and the operator log")
