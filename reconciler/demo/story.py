"""The demo story, step by step, on real loopback servers.

1. Start an aiosmtpd relay (STARTTLS with a trustme CA, AUTH) and an OAuth 2.0 token
   endpoint, both on 127.0.0.1 with ephemeral ports.
2. Write manifests referencing credentials by file and environment variable.
3. ``apply``: the password relay and the OAuth relay become Ready; the password relay is
   selected (the OAuth relay does not ask to be).
4. Rotate the password (server and file), no manifest change: ``plan`` sees it, ``apply``
   re-tests only that relay.
5. A broken update (a wrong username): generation 2 fails its test, generation 1 stays
   active and selected - ``get active`` still hands out generation 1.  The fix (generation
   3) passes again.
6. A standby: a second relay (``backup-relay``, ``priority: 10``) is added; ``validate
   --strict`` accepts the setup, and the backup waits as a ``Standby``.
7. Failover: the relay in use goes down; ``reconcile --force`` re-verifies now, the
   primary fails and the standby takes over; ``get active`` hands out the backup (and
   ``--require-ready`` passes again).
8. Fail-back: the primary comes back (same port); it is Ready at once but the backup
   stays in use (``FailbackPending``) until the primary has been Ready for its
   ``failbackDelay`` (a few seconds in the demo, 5m by default); then ``reconcile`` hands
   selection back (``Failback``) without a test, and ``get active`` hands out the primary.
9. Stop the servers; print the commands to try next.

The demo runs the same CLI entry point a user types (``reconciler.cli.main.main``) in
this process, and checks every step: if the story does not hold, it says which step
failed and exits 1.  It never prints a secret: the secrets are random, live in the
temporary work directory's 0600 files and this process's environment.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from reconciler.cli.main import main as smtpctl
from reconciler.demo import manifests
from reconciler.devservers.oauth import ClientConfig, OAuthServer
from reconciler.devservers.smtp import RelayServer

USER = "billing@example.test"
OAUTH_USER = "notify@example.test"
CLIENT_SECRET_ENV = "SMTPCTL_DEMO_CLIENT_SECRET"  # noqa: S105 - a variable name
PASSWORD_SEED_ENV = "SMTPCTL_DEMO_PASSWORD"  # noqa: S105 - a variable name
SCOPE = "https://mail.example.test/.default"
FAILBACK_DELAY = 5  # seconds: billing-relay's spec.failbackDelay in the demo (default 5m)


class StoryFailed(Exception):
    pass


class Demo:
    def __init__(self, workdir: Path, out: TextIO) -> None:
        self.dir = workdir
        self.out = out
        self.state = workdir / "state"
        self.mdir = workdir / "manifests"
        self.sdir = workdir / "secrets"
        self.steps = 0
        self.password = ""
        self.values: dict[str, Any] = {}
        self._console: Any = None
        if out.isatty():  # colour on a terminal only; plain text in pipes and CI logs
            from rich.console import Console

            self._console = Console(file=out)

    # --- output ------------------------------------------------------------------------
    def say(self, text: str = "", style: str | None = None) -> None:
        if style and self._console is not None:
            self._console.print(text, style=style, markup=False, highlight=False,
                               soft_wrap=True)
        else:
            self.out.write(text + "\n")
        self.out.flush()

    def step(self, title: str) -> None:
        self.steps += 1
        self.say()
        self.say(f"== {self.steps}. {title}", style="bold cyan")

    def run(self, *args: str, expect: int | tuple[int, ...] = 0) -> tuple[int, str]:
        """Run an smtpctl command in-process, echoing it and its output."""
        shown = " ".join(a if a != str(self.state) else "$STATE" for a in args)
        shown = shown.replace(str(self.mdir), "$DEMO/manifests")
        self.say(f"$ smtpctl {shown}", style="bold")
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            code = smtpctl([*args])
        text = buf.getvalue()
        for line in text.rstrip("\n").splitlines():
            self.say("  " + line)
        wanted = expect if isinstance(expect, tuple) else (expect,)
        if code not in wanted:
            raise StoryFailed(f"`smtpctl {shown}` exited {code}, expected {wanted}")
        return code, text

    def status(self, name: str) -> dict[str, Any]:
        from reconciler.stores.base import ObjectRef
        from reconciler.stores.local import LocalStore

        with LocalStore(self.state, create=False) as store:
            obj = store.get_sync(ObjectRef("ExternalSmtp", "default", name))
        if obj is None:
            raise StoryFailed(f"{name} is not in the store")
        return {"generation": obj.generation, **obj.status}

    def check(self, ok: bool, what: str) -> None:
        if not ok:
            raise StoryFailed(what)
        self.say(f"  ok: {what}", style="green")

    # --- the story -----------------------------------------------------------------------
    def play(self) -> None:
        for d in (self.mdir, self.sdir):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(self.sdir, 0o700)
        # Random secrets; a test may seed them (with canaries) to prove none leaks.
        password = os.environ.get(PASSWORD_SEED_ENV) or secrets.token_urlsafe(18)
        client_secret = os.environ.get(CLIENT_SECRET_ENV) or secrets.token_urlsafe(18)
        os.environ[CLIENT_SECRET_ENV] = client_secret
        self.password = password
        self.step("Starting a real SMTP relay (STARTTLS, AUTH) and an OAuth 2.0 token "
                  "endpoint on loopback")
        oauth = OAuthServer(clients=[ClientConfig("smtp-demo", client_secret,
                                                  grants=("client_credentials",),
                                                  subject=OAUTH_USER)])
        relay = RelayServer(mode="starttls", users={USER: password})
        backup_password = secrets.token_urlsafe(18)
        backup = RelayServer(mode="starttls", users={USER: backup_password}, ca=relay.ca)

        def token_ok(user: str, token: str) -> bool:
            info = oauth.token_info(token)
            return info is not None and info.subject.lower() == user.lower()

        relay.token_validator = token_ok
        with oauth, relay, backup:
            self.say(f"  relay          127.0.0.1:{relay.port} (STARTTLS required, "
                     "AUTH PLAIN/LOGIN/XOAUTH2/OAUTHBEARER)")
            self.say(f"  backup relay   127.0.0.1:{backup.port} (STARTTLS required)")
            self.say(f"  token endpoint {oauth.token_url}")
            ca = self.sdir / "relay-ca.pem"
            ca.write_text(relay.ca_pem)
            os.chmod(ca, 0o644)  # whatever the umask: a writable CA file is refused
            pw_file = self.sdir / "smtp-password"
            self._write_secret(pw_file, password)
            backup_pw = self.sdir / "backup-password"
            self._write_secret(backup_pw, backup_password)
            values = {"port": relay.port, "username": USER, "sender": USER,
                      "password_file": pw_file, "ca_file": ca, "oauth_user": OAUTH_USER,
                      "token_url": oauth.token_url, "scope": SCOPE,
                      "client_secret_env": CLIENT_SECRET_ENV, "backup_port": backup.port,
                      "backup_password_file": backup_pw,
                      "failback_delay": f"{FAILBACK_DELAY}s"}
            self.values = values
            (self.mdir / "oauth2provider.yaml").write_text(manifests.PROVIDER.format(**values))
            relays = self.mdir / "relays.yaml"
            relays.write_text(manifests.PASSWORD_RELAY.format(**values) + "---\n"
                              + manifests.OAUTH_RELAY.format(**values))
            self.say(f"  manifests in {self.mdir} (password from a file, client secret "
                     f"from ${CLIENT_SECRET_ENV}, CA from a file)")
            self._allow_secrets()
            self._first_apply(relay)
            self._rotation(relay, pw_file)
            self._broken_update(relays, relay)
            self._standby()
            self._failover(relay, backup)
            self._failback(relay, backup)
        self.say()
        self.say("Servers stopped.")

    def _allow_secrets(self) -> None:
        """smtpctl reads only the secrets you allow (docs/security.md): the demo's secrets
        live beside its manifests' directory and in one environment variable."""
        for var, value, sep in (("SMTPCTL_ALLOW_FILE_ROOT", str(self.sdir), os.pathsep),
                                ("SMTPCTL_ALLOW_ENV", CLIENT_SECRET_ENV, ",")):
            old = os.environ.get(var)
            os.environ[var] = f"{old}{sep}{value}" if old else value
        self.say(f"  trust: smtpctl reads only what you allow (docs/security.md): "
                 f"SMTPCTL_ALLOW_FILE_ROOT={self.sdir} SMTPCTL_ALLOW_ENV={CLIENT_SECRET_ENV}")

    def _first_apply(self, relay: RelayServer) -> None:
        self.step("Apply: every relay is tested before it is saved as Ready")
        self.run("apply", "-f", str(self.mdir), "--state", str(self.state))
        b, o = self.status("billing-relay"), self.status("oauth-relay")
        self.check(_ready(b) and _ready(o), "billing-relay (password) and oauth-relay "
                   "(OAuth 2.0) are Ready")
        self.check(b.get("selected") is True and not o.get("selected"),
                   "billing-relay is the selected relay (one per namespace)")
        self.step("Apply again, nothing changed: zero connection tests")
        before = relay.connections
        self.run("apply", "-f", str(self.mdir), "--state", str(self.state))
        self.check(relay.connections == before,
                   f"the relay saw no new connection ({relay.connections} in total)")

    def _rotation(self, relay: RelayServer, pw_file: Path) -> None:
        self.step("Rotate the SMTP password (server and secret file), manifests unchanged")
        new = f"{self.password}-rotated-{secrets.token_hex(4)}"
        relay.users[USER] = new
        self._write_secret(pw_file, new)
        self.run("plan", "-f", str(self.mdir), "--state", str(self.state), expect=3)
        before = relay.connections
        self.run("apply", "-f", str(self.mdir), "--state", str(self.state))
        self.check(relay.connections == before + 1,
                   "only billing-relay was re-tested, with the rotated password")
        self.check(_ready(self.status("billing-relay")), "billing-relay is Ready again")

    def _broken_update(self, relays: Path, relay: RelayServer) -> None:
        self.step("A broken update: generation 2 uses a username the relay does not know")
        text = relays.read_text().replace(f"username: {USER}", "username: typo@example.test", 1)
        relays.write_text(text)
        self.run("plan", "-f", str(self.mdir), "--state", str(self.state), expect=3)
        self.run("apply", "-f", str(self.mdir), "--state", str(self.state), expect=1)
        b = self.status("billing-relay")
        ready = _cond(b, "Ready")
        self.check(b["generation"] == 2 and ready.get("status") == "False"
                   and ready.get("reason") == "AuthenticationFailed",
                   "generation 2 failed its test (AuthenticationFailed)")
        self.check(b.get("activeGeneration") == 1 and b.get("selected") is True,
                   "generation 1 remains active and selected (last-known-good)")
        self.say(f"  Ready message: {ready.get('message')}")
        _, env = self.run("get", "active", "-o", "env", "--state", str(self.state))
        self.check(f"SMTP_USERNAME='{USER}'" in env and "SMTP_GENERATION='1'" in env,
                   "applications are still handed generation 1")
        self._fix_update(relays)

    def _fix_update(self, relays: Path) -> None:
        text = relays.read_text().replace("username: typo@example.test", f"username: {USER}", 1)
        relays.write_text(text)
        self.run("apply", "-f", str(self.mdir), "--state", str(self.state))
        b = self.status("billing-relay")
        self.check(b["generation"] == 3 and _ready(b) and b.get("activeGeneration") == 3,
                   "the fix (generation 3) passed its test and is the one in use")

    def _standby(self) -> None:
        self.step("A standby: backup-relay (another relay, priority 10) joins billing-relay "
                  "(priority 0)")
        (self.mdir / "backup.yaml").write_text(manifests.BACKUP_RELAY.format(**self.values))
        self.run("validate", "-f", str(self.mdir), "--strict")
        self.run("apply", "-f", str(self.mdir), "--state", str(self.state))
        b, s = self.status("billing-relay"), self.status("backup-relay")
        self.check(_ready(s) and not s.get("selected")
                   and _cond(s, "Selected").get("reason") == "Standby",
                   "backup-relay is Ready and waits as the Standby")
        self.check(b.get("selected") is True, "billing-relay (priority 0) stays in use")

    def _failover(self, relay: RelayServer, backup: RelayServer) -> None:
        self.step("Failover: the relay in use goes down; the standby takes over")
        relay.stop()
        self.say(f"  relay 127.0.0.1:{relay.port} stopped")
        self.run("reconcile", "--force", "--state", str(self.state), expect=1)
        b, s = self.status("billing-relay"), self.status("backup-relay")
        self.check(_cond(b, "Ready").get("reason") == "ConnectionRefused"
                   and (b.get("active") or {}).get("health") == "Failing",
                   "billing-relay failed its re-verification (ConnectionRefused)")
        self.check(s.get("selected") is True and not b.get("selected"),
                   "backup-relay took over (Failover); billing-relay released it")
        _, env = self.run("get", "active", "-o", "env", "--require-ready", "--state",
                          str(self.state))
        self.check(f"SMTP_PORT='{backup.port}'" in env and "SMTP_READY='true'" in env,
                   "applications are now handed the backup relay, and it is healthy")
        self.run("describe", "externalsmtp", "billing-relay", "--state", str(self.state))

    def _failback(self, relay: RelayServer, backup: RelayServer) -> None:
        self.step(f"Fail-back: billing-relay comes back; it takes selection back once it "
                  f"has been Ready for its failbackDelay ({FAILBACK_DELAY}s here, 5m by "
                  f"default)")
        relay.start()  # the same port again
        self.say(f"  relay 127.0.0.1:{relay.port} started again")
        self.run("reconcile", "--force", "externalsmtp", "billing-relay", "--state",
                 str(self.state))
        b, s = self.status("billing-relay"), self.status("backup-relay")
        pending = _cond(b, "Selected")
        self.check(_ready(b) and pending.get("reason") == "FailbackPending",
                   "billing-relay is back and Ready; it waits out its failbackDelay "
                   "(FailbackPending)")
        self.say(f"  Selected message: {pending.get('message')}")
        self.check(s.get("selected") is True and not b.get("selected"),
                   "backup-relay stays in use meanwhile (no flapping)")
        # The hysteresis is wall-clock time: wait it out (what `apply --watch` or the
        # operator do on their own - they schedule a pass for that moment).
        since = _epoch(_cond(b, "Ready").get("lastTransitionTime"))
        wait = since + FAILBACK_DELAY - time.time()
        if wait > 0:
            self.say(f"  (waiting {wait:.1f}s for the fail-back delay)")
            time.sleep(wait)
        self.run("reconcile", "--state", str(self.state))
        b, s = self.status("billing-relay"), self.status("backup-relay")
        took = _cond(b, "Selected")
        self.check(b.get("selected") is True and not s.get("selected")
                   and took.get("reason") == "Active"
                   and _epoch(took.get("lastTransitionTime")) - since >= FAILBACK_DELAY,
                   "billing-relay took selection back (Failback) after being Ready for its "
                   "failbackDelay")
        _, env = self.run("get", "active", "-o", "env", "--require-ready", "--state",
                          str(self.state))
        self.check(f"SMTP_PORT='{relay.port}'" in env and "SMTP_READY='true'" in env
                   and "SMTP_RELAY='default/billing-relay'" in env,
                   "applications are handed billing-relay again")

    def _write_secret(self, path: Path, value: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(value + "\n")

    def next_steps(self, kept: bool) -> None:
        st = str(self.state)
        self.say()
        self.say("Try next:")
        if kept:
            self.say(f"  smtpctl get -o wide --state {st}")
            self.say(f"  smtpctl describe externalsmtp billing-relay --state {st}")
            self.say(f"  smtpctl get active -o javamail --state {st}")
            self.say(f"  smtpctl validate -f {self.mdir}")
        self.say("  smtpctl dev                              # keep loopback relays running "
                 "(the demo's stop with it)")
        self.say("  smtpctl init gmail > my-relay.yaml       # a manifest for a provider "
                 "(ses, sendgrid, microsoft365, ...)")
        self.say("  smtpctl validate -f my-relay.yaml        # offline schema check, CI-friendly")
        self.say("  smtpctl plan -f my-relay.yaml            # what would change and be tested")
        self.say("  smtpctl apply -f my-relay.yaml           # test connection and save")
        self.say("  smtpctl get active -o env                # the selected relay as SMTP_*")
        self.say("  smtpctl apply -f DIR --watch             # keep re-verifying (refreshInterval)")
        if not kept:
            self.say("  smtpctl demo --keep                      # keep the demo state to "
                     "explore it with get/describe")
        if kept:
            self.say(f"(demo files kept in {self.dir}; remove them with: rm -rf {self.dir})")


def _cond(status: dict[str, Any], ctype: str) -> dict[str, Any]:
    for c in status.get("conditions") or []:
        if c.get("type") == ctype:
            return dict(c)
    return {}


def _epoch(rfc3339: Any) -> float:
    try:
        return datetime.strptime(str(rfc3339), "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except ValueError as exc:
        raise StoryFailed(f"not a timestamp: {rfc3339!r}") from exc


def _ready(status: dict[str, Any]) -> bool:
    return _cond(status, "Ready").get("status") == "True"


@contextlib.contextmanager
def _workdir(path: str | None, keep: bool) -> Iterator[Path]:
    if path:
        p = Path(path)
        if p.exists() and any(p.iterdir()):
            raise StoryFailed(f"{p} is not empty; give a new or empty --workdir")
        p.mkdir(parents=True, exist_ok=True)
        # Private whatever the umask: it holds the demo's secrets and its state directory
        # (smtpctl refuses a state directory others could replace).
        p.chmod(0o700)
        yield p
        return
    p = Path(tempfile.mkdtemp(prefix="smtpctl-demo-"))
    try:
        yield p
    finally:
        if not keep:
            shutil.rmtree(p, ignore_errors=True)


def play(workdir: str | None = None, *, keep: bool = False, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    started = time.monotonic()
    try:
        with _workdir(workdir, keep) as wd:
            demo = Demo(wd, out)
            demo.say("smtpctl demo: declarative 'Test Connection And Save' for SMTP relays")
            try:
                with warnings.catch_warnings():
                    # aiosmtpd's own deprecation notice (Session.login_data) is noise here.
                    warnings.filterwarnings("ignore", category=DeprecationWarning)
                    demo.play()
            except StoryFailed as exc:
                demo.say(f"\ndemo FAILED at step {demo.steps}: {exc}", style="bold red")
                return 1
            finally:
                os.environ.pop(CLIENT_SECRET_ENV, None)
            demo.say(f"\nDemo finished in {time.monotonic() - started:.1f}s: every step held.",
                     style="bold green")
            demo.next_steps(kept=keep or bool(workdir))
    except StoryFailed as exc:
        out.write(f"smtpctl demo: {exc}\n")
        return 2
    return 0
