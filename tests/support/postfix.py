"""A real MTA on loopback: Debian's Postfix with Dovecot as its SASL backend.

The interop peer nobody on this project wrote.  :func:`start_peer` builds a private
instance under a fresh temp directory and returns a :class:`PostfixPeer`; ``stop()``
takes everything down again.  The decisions are written down here
(the user-facing account is ``docs/interop.md``):

* **Private everything.**  ``postfix -c ROOT/etc`` with its own ``queue_directory``,
  ``data_directory`` and maillog, and ``dovecot -c ROOT/dovecot/dovecot.conf`` with its own
  ``base_dir``/``state_dir``/``instance_name``: nothing reads or writes ``/etc/postfix``,
  ``/var/spool/postfix`` or ``/run/dovecot``, so several instances (``pytest -n 3``: one per
  worker) coexist, each on its own free ports.  No file lock is needed.
* **Nothing leaves the machine.**  Listeners on ``127.0.0.1`` only, every transport is
  ``error:``: the one message a test sends (``--send-test-message``) bounces in the
  private queue.
* **Listeners** (:data:`LISTENERS`): STARTTLS submission
  (``smtpd_tls_security_level=encrypt``, ``smtpd_tls_auth_only=yes``), implicit TLS
  (``smtpd_tls_wrappermode=yes``) and a plain one that offers *no* STARTTLS but does
  advertise AUTH: the bait for a downgrade (a client asked for STARTTLS must fail, a client
  with credentials must not send them); plus variants with one SASL mechanism each, no
  SASL, an expired certificate, TLS 1.2 at most, and a 421 greeting.
* **SASL by Dovecot**: a ``passwd-file`` passdb for PLAIN/LOGIN/CRAM-MD5 and an ``oauth2`` passdb
  for XOAUTH2/OAUTHBEARER that asks :class:`IntrospectionServer` (served by this process)
  whether a token is active.  Dovecot's ``disable_plaintext_auth`` is off: whether AUTH
  may happen in the clear is Postfix's per-listener policy, which is what clients see.
* **Send-as**: ``smtpd_sender_login_maps`` + ``reject_sender_login_mismatch``.  Postfix's
  default ``smtpd_delay_reject = yes`` is kept, as on real relays: the ``553 5.7.1 Sender
  address rejected: not owned by user`` answer arrives at RCPT TO, not MAIL FROM.
* **Daemons detach with ``</dev/null >LOG 2>&1``**: one that inherits a pipe of the
  caller makes the caller (pytest capture, ``subprocess.run``) hang.
* **Certificates** come from a trustme CA; ``ca_pem``/``ca_file`` is what a client trusts.

Usable as a pytest fixture (:func:`postfix_peer`, session scoped, one per xdist worker,
failing with a reason when the Debian packages are missing) or as a context manager
(``with start_peer() as peer:``) from scripts such as the interop matrix and the benchmark.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import datetime
import functools
import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal

import pytest
import trustme

from reconciler.secret import Secret
from tests.support import canary, peers
from tests.support.introspection import IntrospectionServer

USER = "probe@interop.test"  # the SASL login; owns its own address for send-as
OTHER_SENDER = "someone-else@interop.test"  # an address USER may not send as
HOSTNAME = "mx.interop.test"
REQUIRED_BINARIES = ("postfix", "postconf", "dovecot", "doveadm")
_START_TIMEOUT = 20.0
_STOP_TIMEOUT = 15.0


def missing_binaries() -> list[str]:
    """Which of Postfix/Dovecot's binaries are not installed (``[]`` when all are)."""
    return peers.missing("postfix")


def _which(name: str) -> str | None:
    return peers.which(name)


def skip_reason() -> str | None:
    """Why the peer cannot run here, or ``None`` when it can (the name is historical: a
    test that needs the peer *fails* with this reason, see :mod:`tests.support.peers`)."""
    reason = peers.missing_reason("postfix")
    if reason:
        return reason
    if os.geteuid() != 0:
        return "the Postfix/Dovecot interop peer must be started as root"
    return None


def free_port() -> int:
    """An ephemeral port on 127.0.0.1 that was free a moment ago (the kernel picked it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PostfixPeer:
    """A running Postfix + Dovecot pair and what a client needs to talk to it."""

    root: Path
    ports: dict[str, int]  # listener name (see LISTENERS) -> port on 127.0.0.1
    ca_pem: str
    ca_file: Path
    password: Secret
    introspection: IntrospectionServer
    host: str = "127.0.0.1"
    user: str = USER
    other_sender: str = OTHER_SENDER
    _dovecot_pid: int | None = field(default=None, repr=False)
    _stopped: bool = field(default=False, repr=False)

    @property
    def starttls_port(self) -> int:
        return self.ports["starttls"]

    @property
    def implicit_port(self) -> int:
        return self.ports["implicit"]

    @property
    def plain_port(self) -> int:
        return self.ports["plain"]

    @property
    def maillog(self) -> Path:
        return self.root / "log" / "maillog"

    @property
    def dovecot_log(self) -> Path:
        return self.root / "log" / "dovecot.log"

    @property
    def log_dir(self) -> Path:
        return self.root / "log"

    def issue_token(self, name: str = "token") -> Secret:
        """A fresh canary access token that Dovecot will accept for :attr:`user`."""
        token = Secret(canary.ACCESS_TOKEN_PREFIX + canary.canary(name))
        self.introspection.grant(token, self.user)
        return token

    def logs(self) -> str:
        """Postfix's and Dovecot's logs (for assertions and failure reports)."""
        parts = []
        for path in (self.maillog, self.dovecot_log):
            if path.exists():
                parts.append(path.read_text("utf-8", "replace"))
        return "\n".join(parts)

    def stop(self) -> None:
        """Stop Postfix and Dovecot and wait for them; safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        try:
            _stop_daemons(self.root, self._dovecot_pid)
        finally:
            self.introspection.stop()
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostfixPeer:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# --- configuration -------------------------------------------------------------------------


def _main_cf(root: Path) -> str:
    return f"""\
# Generated by tests/support/postfix.py: a private, loopback-only, never-delivering relay.
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = {HOSTNAME}
mydomain = interop.test
myorigin = $myhostname
mydestination =
relay_domains =
local_recipient_maps =
alias_maps =
alias_database =
mynetworks = 127.0.0.1/32
inet_interfaces = loopback-only
inet_protocols = ipv4
biff = no
smtpd_banner = $myhostname ESMTP interop peer
# Nothing may ever leave the machine: every transport is an error.  smtpd would then
# treat every recipient as unknown and answer RCPT TO with 550 5.1.1 (which would fail
# every relay check), so that lookup is switched off: RCPT is decided by the relay and
# send-as restrictions alone, as on a real submission relay.
default_transport = error:the interop peer never delivers
relay_transport = error:the interop peer never delivers
local_transport = error:the interop peer never delivers
smtpd_reject_unlisted_recipient = no
smtpd_reject_unlisted_sender = no
# SASL through Dovecot, relay only for authenticated clients.
smtpd_sasl_type = dovecot
smtpd_sasl_path = private/auth
smtpd_sasl_security_options = noanonymous
smtpd_sasl_tls_security_options = noanonymous
smtpd_relay_restrictions = permit_sasl_authenticated, reject_unauth_destination
smtpd_sender_login_maps = texthash:{root}/etc/sender_logins
smtpd_sender_restrictions = reject_sender_login_mismatch
# TLS with a trustme certificate.
smtpd_tls_chain_files = {root}/etc/server.pem
smtpd_tls_security_level = may
smtpd_tls_session_cache_database =
smtpd_tls_loglevel = 1
smtp_tls_session_cache_database =
# For the "busy" listener (master.cf -o values cannot hold spaces).
busy_client_restrictions = check_client_access texthash:{root}/etc/busy
# No syslog here: log to a file of ours.
maillog_file = {root}/log/maillog
maillog_file_prefixes = {root}/log
"""


_SERVICES = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


# Listener name -> smtpd overrides.  The ``*_only`` listeners narrow the advertised SASL
# mechanisms (``smtpd_sasl_mechanism_filter``) so that a client which picks "the strongest
# mechanism both sides support" can be made to use each one against the real server.
LISTENERS: dict[str, tuple[str, ...]] = {
    "starttls": ("smtpd_tls_security_level=encrypt", "smtpd_tls_auth_only=yes"),
    "implicit": ("smtpd_tls_wrappermode=yes",),
    "plain": ("smtpd_tls_security_level=none", "smtpd_tls_auth_only=no"),
    "login_only": ("smtpd_tls_security_level=encrypt", "smtpd_tls_auth_only=yes",
                   "smtpd_sasl_mechanism_filter=login"),
    "xoauth2_only": ("smtpd_tls_security_level=encrypt", "smtpd_tls_auth_only=yes",
                     "smtpd_sasl_mechanism_filter=xoauth2"),
    "oauthbearer_only": ("smtpd_tls_security_level=encrypt", "smtpd_tls_auth_only=yes",
                         "smtpd_sasl_mechanism_filter=oauthbearer"),
    "cram_md5_only": ("smtpd_tls_security_level=encrypt", "smtpd_tls_auth_only=yes",
                      "smtpd_sasl_mechanism_filter=cram-md5"),
    # TLS but no SASL at all: a relay that authorises by IP only (AuthNotSupported).
    "no_sasl": ("smtpd_tls_security_level=encrypt", "smtpd_sasl_auth_enable=no"),
    # A server certificate that expired yesterday (same CA).
    "expired_cert": ("smtpd_tls_security_level=encrypt", "smtpd_tls_auth_only=yes",
                     "smtpd_tls_chain_files=$config_directory/expired.pem"),
    # TLS 1.2 at most, for a client whose floor is TLS 1.3 (tls.minVersion).
    "tls12_only": ("smtpd_tls_security_level=encrypt", "smtpd_tls_auth_only=yes",
                   "smtpd_tls_mandatory_protocols=<=TLSv1.2",
                   "smtpd_tls_protocols=<=TLSv1.2"),
    # Answers every connection with 421 (a relay that is temporarily refusing service).
    "busy": ("smtpd_delay_reject=no", "smtpd_client_restrictions=$busy_client_restrictions"),
    # Pipelining enforcement (the probe's opt-in pipelined AUTH must pass or fall back):
    # Postfix disconnects a client that pipelines where RFC 2920/5321 do not allow it ...
    "forbid_pipelining": ("smtpd_tls_security_level=encrypt", "smtpd_tls_auth_only=yes",
                          "smtpd_forbid_unauth_pipelining=yes"),
    # ... or rejects its recipients ("Improper use of SMTP command pipelining").
    "reject_pipelining": ("smtpd_tls_security_level=encrypt", "smtpd_tls_auth_only=yes",
                          "smtpd_relay_restrictions=reject_unauth_pipelining,"
                          "permit_sasl_authenticated,reject_unauth_destination"),
}


def _master_cf(ports: dict[str, int]) -> str:
    lines = ["# Generated by tests/support/postfix.py.  No :25 listener; chroot off everywhere."]
    for name, overrides in LISTENERS.items():
        lines.append(f"127.0.0.1:{ports[name]} inet n - n - - smtpd")
        lines.append(f"  -o syslog_name=postfix/{name}")
        lines.extend(f"  -o {o}" for o in ("smtpd_sasl_auth_enable=yes", *overrides))
    return "\n".join(lines) + "\n" + _SERVICES


def _dovecot_conf(root: Path, introspection_url: str) -> str:
    return f"""\
# Generated by tests/support/postfix.py: Dovecot as an authentication service only.
base_dir = {root}/dovecot/run
state_dir = {root}/dovecot/state
instance_name = smtpctl-interop-{root.name}
log_path = {root}/log/dovecot.log
info_log_path = {root}/log/dovecot.log
protocols =
ssl = no
# Postfix decides per listener whether AUTH may happen in the clear.
disable_plaintext_auth = no
auth_mechanisms = plain login cram-md5 xoauth2 oauthbearer
# Without these a failed login delays the next one past a client's short timeouts.
auth_failure_delay = 0
login_trusted_networks = 127.0.0.0/8
auth_verbose = yes
passdb {{
  driver = passwd-file
  mechanisms = plain login cram-md5
  args = scheme=PLAIN {root}/dovecot/passwd
}}
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {root}/dovecot/oauth2.conf.ext
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home=/nonexistent
}}
service auth {{
  unix_listener {root}/queue/private/auth {{
    mode = 0660
    user = postfix
    group = postfix
  }}
}}
# No auth penalty: anvil's per-IP penalty delays the login after a failed one by
# seconds (every test client is 127.0.0.1); a listener nobody may open disables it.
service anvil {{
  chroot =
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
"""


def _oauth2_conf(introspection_url: str) -> str:
    return f"""\
introspection_mode = post
introspection_url = {introspection_url}
force_introspection = yes
username_attribute = username
active_attribute = active
active_value = true
"""


def _write(path: Path, text: str, mode: int = 0o644, group: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if group is not None:
        os.chown(path, 0, grp.getgrnam(group).gr_gid)
    path.chmod(mode)


def _run(argv: list[str], log: Path, timeout: float) -> subprocess.CompletedProcess[bytes]:
    """Run a daemon-control command detached from our stdio (output appended to ``log``)."""
    with open(log, "ab") as out:
        return subprocess.run(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            timeout=timeout, check=False, start_new_session=True,
        )


def _postfix(root: Path, *args: str, timeout: float = _START_TIMEOUT) -> int:
    argv = [_which("postfix") or "postfix", "-c", str(root / "etc"), *args]
    return _run(argv, root / "log" / "control.log", timeout).returncode


_DAEMON_NAMES = ("master", "dovecot")  # /proc/PID/comm of Postfix's and Dovecot's masters
_PREFIX = "smtpctl-postfix-"


def _stop_daemons(root: Path, dovecot_pid: int | None) -> None:
    """SIGTERM both daemon masters at once (each stops its children), then wait for both.

    Signalling directly instead of ``postfix stop`` / ``doveadm stop``: those wait one
    after the other (about 2 s + 3 s here); in parallel teardown costs the slower one.
    Only a pid from this instance's pid files that still names a Postfix or Dovecot
    master is signalled (a stale pid file may name a reused pid).
    """
    candidates = (_read_pid(root / "queue" / "pid" / "master.pid"),
                  dovecot_pid or _read_pid(root / "dovecot" / "run" / "master.pid"))
    pids = [p for p in candidates if p is not None and _comm(p) in _DAEMON_NAMES]
    for sig, wait in ((signal.SIGTERM, _STOP_TIMEOUT), (signal.SIGKILL, 5.0)):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)


def _comm(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def sweep_stale_instances() -> list[Path]:
    """Stop and remove instances left behind by a test process that was killed.

    A session fixture's teardown does not run when pytest is SIGKILLed (a CI timeout);
    its daemons would then live on.  Each instance records its owner's pid; an instance
    whose owner is gone is stopped (through its own pid files) and deleted.  Instances of
    live processes - another pytest worker, a concurrent run - are left alone.
    """
    swept = []
    for root in Path(tempfile.gettempdir()).glob(_PREFIX + "*"):
        if root.is_symlink() or not root.is_dir() or root.stat().st_uid != os.geteuid():
            continue
        owner = _read_pid(root / "owner.pid")
        if owner is not None and _alive(owner):
            continue
        if owner is None and time.time() - root.stat().st_mtime < 120:
            continue  # being created right now by someone (owner.pid is written first)
        _stop_daemons(root, None)
        shutil.rmtree(root, ignore_errors=True)
        swept.append(root)
    return swept


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie nobody reaped yet counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _wait_for(what: str, predicate: Callable[[], bool], root: Path) -> None:
    """Poll ``predicate`` (bounded by the start timeout); fail with the daemons' logs."""
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise RuntimeError(f"interop peer: {what} within {_START_TIMEOUT:.0f}s\n{_log_tail(root)}")


def _read(path: Path) -> str:
    try:
        return path.read_text("utf-8", "replace")
    except OSError:
        return ""


def _log_tail(root: Path, lines: int = 15) -> str:
    """The last lines of every log of the instance (none holds a secret: no auth_debug)."""
    out = []
    for path in sorted((root / "log").glob("*")):
        text = path.read_text("utf-8", "replace").splitlines()[-lines:]
        out.append(f"--- {path.name}\n" + "\n".join(text))
    return "\n".join(out)


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _greets(port: int, wrapper: bool) -> bool:
    """Whether the listener answers like an SMTP server: a reply code first, or - for
    a wrappermode port, which waits for our TLS ClientHello - silence without a hang-up."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.settimeout(0.5 if wrapper else 5)
            try:
                first = s.recv(64)
            except TimeoutError:
                return wrapper
            return first[:3].isdigit()
    except OSError:
        return False


def _issue_cert(ca: trustme.CA, path: Path, *, not_before: datetime.datetime | None = None,
                not_after: datetime.datetime | None = None) -> None:
    # Deliberately not "localhost": connecting by that name is the wrong-host case.
    cert = ca.issue_cert(HOSTNAME, "127.0.0.1", not_before=not_before, not_after=not_after)
    pem = cert.private_key_pem.bytes() + b"".join(c.bytes() for c in cert.cert_chain_pems)
    path.write_bytes(pem)
    path.chmod(0o600)


def start_peer(ca: trustme.CA | None = None, *, attempts: int = 3) -> PostfixPeer:
    """Configure and start a private Postfix + Dovecot; stop it with ``peer.stop()``.

    Raises ``RuntimeError`` (after cleaning up) when either daemon does not come up.
    A port picked free can be taken by another process before Postfix binds it; that one
    failure is retried with fresh ports (bounded by ``attempts``).
    """
    reason = skip_reason()
    if reason:
        raise RuntimeError(reason)
    ca = ca or trustme.CA()
    sweep_stale_instances()
    for attempt in range(1, attempts + 1):
        try:
            return _start_once(ca)
        except RuntimeError as exc:
            if "Address already in use" not in str(exc) or attempt == attempts:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def _start_once(ca: trustme.CA) -> PostfixPeer:
    # mkdtemp is 0700; the unprivileged postfix/dovecot users must traverse the tree.
    root = Path(tempfile.mkdtemp(prefix=_PREFIX))
    root.chmod(0o755)
    (root / "owner.pid").write_text(f"{os.getpid()}\n")
    introspection = IntrospectionServer().start()
    ports: dict[str, int] = {}
    for name in LISTENERS:  # the kernel may hand out a port twice: bounded re-pick
        for _ in range(20):
            port = free_port()
            if port not in ports.values():
                break
        ports[name] = port
    password = Secret(canary.PASSWORD)
    ca_file = root / "etc" / "ca.pem"
    peer = PostfixPeer(
        root=root, ports=ports,
        ca_pem=ca.cert_pem.bytes().decode(), ca_file=ca_file, password=password,
        introspection=introspection,
    )
    try:
        for sub in ("etc", "log", "data", "queue", "dovecot/run", "dovecot/state"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        postfix_uid = pwd.getpwnam("postfix").pw_uid
        os.chown(root / "data", postfix_uid, grp.getgrnam("postfix").gr_gid)
        _write(root / "etc" / "main.cf", _main_cf(root))
        _write(root / "etc" / "master.cf", _master_cf(ports))
        _write(root / "etc" / "sender_logins", f"{USER} {USER}\n")
        _write(ca_file, peer.ca_pem)
        _issue_cert(ca, root / "etc" / "server.pem")
        yesterday = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
        _issue_cert(ca, root / "etc" / "expired.pem",
                    not_before=yesterday - datetime.timedelta(days=30), not_after=yesterday)
        _write(root / "etc" / "busy", "127.0.0.1 421 4.3.2 Service temporarily unavailable\n")
        _write(root / "dovecot" / "dovecot.conf", _dovecot_conf(root, introspection.url))
        _write(root / "dovecot" / "oauth2.conf.ext", _oauth2_conf(introspection.url))
        # The one place the clear password is written: Dovecot's own password file
        # (0640 root:dovecot), deleted with the instance.
        _write(root / "dovecot" / "passwd", f"{USER}:{{PLAIN}}{password.reveal()}\n",
               mode=0o640, group="dovecot")

        if _postfix(root, "start") != 0:
            raise RuntimeError(f"interop peer: `postfix start` failed\n{_log_tail(root)}")
        if _run([_which("dovecot") or "dovecot", "-c", str(root / "dovecot" / "dovecot.conf")],
                root / "log" / "control.log", _START_TIMEOUT).returncode != 0:
            raise RuntimeError(f"interop peer: dovecot did not start\n{_log_tail(root)}")
        auth_socket = root / "queue" / "private" / "auth"
        _wait_for("Dovecot's auth socket did not appear", auth_socket.exists, root)
        for port in ports.values():
            _wait_for(f"Postfix did not listen on 127.0.0.1:{port}",
                      functools.partial(_listening, port), root)
        peer._dovecot_pid = _read_pid(root / "dovecot" / "run" / "master.pid")
        # master listens even when an smtpd cannot start: one banner per listener proves
        # every service is configured right (and warms each smtpd up).
        for name, port in ports.items():
            wrapper = "smtpd_tls_wrappermode=yes" in LISTENERS[name]
            if not _greets(port, wrapper) or "fatal:" in _read(peer.maillog):
                raise RuntimeError(f"interop peer: listener {name} (127.0.0.1:{port}) does "
                                   f"not work\n{_log_tail(root)}")
    except BaseException:
        peer.stop()
        raise
    return peer


# --- swaks, the reference client ---------------------------------------------------------

SWAKS_EXIT_MEANING: dict[int, str] = {
    0: "passed", 1: "bad options", 2: "could not connect", 6: "connection closed",
    10: "missing Perl module", 21: "bad banner", 22: "HELO/EHLO rejected",
    23: "MAIL FROM rejected", 24: "RCPT TO rejected", 28: "AUTH failed", 29: "TLS failed",
    32: "EHLO after TLS rejected",
}


@dataclass(frozen=True)
class SwaksResult:
    """What swaks did: its exit code and its transcript (passwords already hidden)."""

    exit_code: int
    transcript: str
    elapsed_seconds: float

    @property
    def passed(self) -> bool:
        return self.exit_code == 0

    @property
    def verdict(self) -> str:
        meaning = SWAKS_EXIT_MEANING.get(self.exit_code, "error")
        return "passed" if self.passed else f"failed: {meaning} (exit {self.exit_code})"

    @property
    def sent_auth(self) -> bool:
        """Whether swaks sent an AUTH command (whatever the outcome)."""
        return any(line.lstrip(" ").startswith(("-> AUTH", "~> AUTH"))
                   for line in self.transcript.splitlines())


@functools.cache
def swaks_skip_reason() -> str | None:
    """Why swaks cannot act as the reference client here, or ``None``."""
    reason = peers.missing_reason("swaks")
    if reason:
        return reason
    probe = subprocess.run(["swaks", "--support"], capture_output=True, text=True,
                           stdin=subprocess.DEVNULL, timeout=30, check=False)
    if "=== TLS supported" not in probe.stdout + probe.stderr:
        return "swaks has no TLS support here (apt-get install libnet-ssleay-perl)"
    return None


def run_swaks(
    server: str, port: int, *, tls: Literal["starttls", "implicit", "none"],
    auth: str | None = None, user: str | None = None, password: Secret | None = None,
    sender: str = USER, recipient: str = USER, ca_file: Path | None = None,
    verify: bool = True, timeout: float = 10.0, quit_after: str = "RCPT",
    extra: tuple[str, ...] = (),
) -> SwaksResult:
    """Run swaks for the same dialogue the probe has: TLS, AUTH, MAIL, RCPT, then QUIT.

    The password travels in ``SWAKS_OPT_auth_password`` (not argv, which other users can
    read in /proc) and ``--auth-hide-password`` keeps it out of the transcript; the
    transcript is still checked against the canaries by the callers.
    """
    argv = ["swaks", "--server", f"{server}:{port}", "--from", sender, "--to", recipient,
            "--quit-after", quit_after, "--timeout", f"{max(1, int(timeout))}s",
            "--auth-hide-password", "--helo", "probe.interop.test"]
    if tls == "starttls":
        argv.append("--tls")
    elif tls == "implicit":
        argv.append("--tls-on-connect")
    if tls != "none" and verify:
        argv.append("--tls-verify")
        if ca_file is not None:
            argv += ["--tls-ca-path", str(ca_file)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWAKS_")}
    if auth is not None:
        argv += ["--auth", auth, "--auth-user", user or USER]
        if password is not None:
            env["SWAKS_OPT_auth_password"] = password.reveal()
    argv += list(extra)
    started = time.monotonic()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              env=env, timeout=timeout + 10, check=False)
        code, out = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as exc:
        code = 124
        out = (exc.stdout or b"").decode("utf-8", "replace") if isinstance(
            exc.stdout, bytes) else (exc.stdout or "")
    return SwaksResult(code, out, time.monotonic() - started)


# --- JavaMail, the original form's client --------------------------------------------------

JAVAMAIL_JARS = ("/usr/share/java/jakarta-mail.jar", "/usr/share/java/jakarta-activation.jar")
JAVAMAIL_SOURCE = Path(__file__).resolve().parents[2] / "hack" / "postfix" / "JavaMailTest.java"
_javamail_build: dict[str, Path] = {}


@functools.cache
def javamail_skip_reason() -> str | None:
    """Why the JavaMail reference client cannot run here, or ``None``."""
    return peers.missing_reason("javamail")


def _javamail_classes() -> Path:
    """Compile JavaMailTest.java once per process (javac, ~1 s) into a temp directory."""
    if "dir" not in _javamail_build:
        out = Path(tempfile.mkdtemp(prefix="smtpctl-javamail-"))
        atexit.register(shutil.rmtree, out, True)
        subprocess.run(["javac", "-d", str(out), "-cp", ":".join(JAVAMAIL_JARS),
                        str(JAVAMAIL_SOURCE)], check=True, capture_output=True, timeout=120,
                       stdin=subprocess.DEVNULL)
        _javamail_build["dir"] = out
    return _javamail_build["dir"]


def _truststore(ca_file: Path) -> Path:
    """A PKCS#12 trust store holding the CA, next to it (Java does not read PEM bundles)."""
    store = ca_file.with_suffix(".p12")
    if not store.exists():
        subprocess.run(["keytool", "-importcert", "-noprompt", "-alias", "interop-ca",
                        "-file", str(ca_file), "-keystore", str(store), "-storetype",
                        "PKCS12", "-storepass", "changeit"],
                       check=True, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    return store


@dataclass(frozen=True)
class JavaMailResult:
    line: str  # "passed" or "failed: Exception: message"
    elapsed_seconds: float

    @property
    def passed(self) -> bool:
        return self.line == "passed"


def run_javamail(host: str, port: int, *, user: str | None, password: Secret | None,
                 props: dict[str, str], ca_file: Path | None,
                 timeout: float = 30.0) -> JavaMailResult:
    """``Transport.connect`` with these ``mail.smtp.*`` properties (see JavaMailTest.java)."""
    argv = ["java", "-Xshare:auto", "-XX:TieredStopAtLevel=1"]
    if ca_file is not None:
        argv += [f"-Djavax.net.ssl.trustStore={_truststore(ca_file)}",
                 "-Djavax.net.ssl.trustStorePassword=changeit"]
    argv += ["-cp", ":".join((str(_javamail_classes()), *JAVAMAIL_JARS)), "JavaMailTest",
             host, str(port), user or "-", *(f"{k}={v}" for k, v in props.items())]
    env = {k: v for k, v in os.environ.items() if k != "JAVAMAIL_PASSWORD"}
    if password is not None:
        env["JAVAMAIL_PASSWORD"] = password.reveal()
    started = time.monotonic()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout,
                              stdin=subprocess.DEVNULL, check=False)
        lines = done.stdout.strip().splitlines()
        line = lines[-1] if lines else f"failed: java exit {done.returncode}"
    except subprocess.TimeoutExpired:
        line = "failed: timeout"
    return JavaMailResult(line, time.monotonic() - started)


# --- leak checks ---------------------------------------------------------------------------


def secret_forms(value: str) -> list[str]:
    """``value`` and its base64 forms at all three alignments inside a larger payload.

    ``canary.find_canary`` knows the forms for a few fixed SASL prefixes; an AUTH PLAIN
    payload ``\\0probe@interop.test\\0PASSWORD`` puts the password at the third
    alignment, which it misses.  The middle of the encoding (quads made of the value's
    bytes only) is the same whatever comes before or after, so it is what to look for.
    """
    raw = value.encode()
    forms = [value]
    for k in range(3):
        enc = base64.b64encode(b"\0" * k + raw).decode()
        forms.append(enc[4 if k else 0: -4])
    return [f for f in forms if len(f) >= 8]


def assert_secret_absent(text: str | bytes, value: str, where: str) -> None:
    """Fail when ``value`` (or a base64 form of it) occurs in ``text``."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    assert not any(form in text for form in secret_forms(value)), f"secret leaked into {where}"


# --- pytest ------------------------------------------------------------------------------


_shared: PostfixPeer | None = None
_shared_users = 0


@contextlib.contextmanager
def shared_peer() -> Iterator[PostfixPeer]:
    """The process-wide instance: started by the first user, stopped by the last.

    Every interop module imports :func:`postfix_peer`; pytest makes one session fixture
    per importing module, and this reference count makes them all share one instance
    per process (one per xdist worker) instead of paying 2 s of start-up per module.
    """
    global _shared, _shared_users
    if _shared is None:
        _shared = start_peer()
    _shared_users += 1
    try:
        yield _shared
    finally:
        _shared_users -= 1
        if _shared_users == 0:
            peer, _shared = _shared, None
            peer.stop()


@pytest.fixture(scope="session")
def postfix_peer() -> Iterator[PostfixPeer]:
    """One Postfix + Dovecot per pytest process (per xdist worker), stopped at session end.

    Fails (with the reason; never skips) when the Debian packages are not installed or we
    are not root: CI must not go green without its interop peer.
    """
    peers.fail_unless(skip_reason())
    with shared_peer() as peer:
        yield peer


@pytest.fixture(scope="session")
def swaks_ready() -> None:
    """Fail a test that needs swaks with TLS support when it is missing (never skip)."""
    peers.fail_unless(swaks_skip_reason())
