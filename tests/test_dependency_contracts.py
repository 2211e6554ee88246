"""Contracts with the private parts of our dependencies.

Where smtpctl (or its test emulator) relies on something a library does not promise - a
private attribute, an internal module, a method it overrides - this file states the
assumption as a test named after the library, so an upgrade that breaks one fails *here*,
with a message that says what moved, instead of somewhere deep in the probe or the
operator tests.  ``pyproject.toml`` caps each such dependency below its next minor
release; lift a cap only together with this file.

Every private use in the code base is listed here (``git grep -nE '\\._[a-z]'`` on library
objects finds them): a new one without a contract fails review.

* aiosmtplib (``reconciler/probe/wire.py``): ``_PipeliningProtocol`` subclasses
  ``SMTPProtocol`` and drives ``_buffer``, ``_response_waiter``, ``_response_pending``
  and ``_read_response_from_buffer`` to keep pipelined replies; it imports
  ``MAX_RESPONSE_LENGTH`` and ``COMMAND_INJECTION_REGEX`` from ``aiosmtplib.protocol``.
  aiosmtplib 5.1.2 has no ``_response_pending``: 26 of the 30 probe tests failed there,
  and ``test_aiosmtplib_protocol_private_state`` fails there with that name.
* kmock (``tests/support/kube_emulator.py``): imports ``kmock._internal`` (``apps``,
  ``enums``, ``parsing``, ``rendering``), overrides ``KubernetesEmulator``'s ``_serve_*``
  and ``_handle`` methods, calls ``RawHandler._handle`` and ``_render_error``, and replaces
  ``parsing.parse_path``.
* hypothesis-jsonschema drives Hypothesis' internal ``many``: see
  ``tests/test_fuzz_validate.py::test_hypothesis_jsonschema_contract``.
* aiohttp (``reconciler/stores/aiohttpimport.py``): no private name in the code, but the
  operator's start-up relies on ``aiohttp.connector`` building its fallback contexts
  (``_SSL_CONTEXT_VERIFIED``, ``_SSL_CONTEXT_UNVERIFIED``) at import from the default CA
  file, which ``SSL_CERT_FILE`` redirects.  Not capped: if aiohttp stops doing that, the
  import just costs less and ``test_aiohttp_builds_its_fallback_contexts_at_import`` says
  the redirection can go; correctness never depends on it (every ``KubeApi`` connection
  passes its own context).
* CPython's ``atexit._run_exitfuncs`` (``reconciler/cli/main.py``, ``exit_now``): smtpctl
  runs the exit handlers itself, then ends with ``os._exit`` (no interpreter teardown).
  Not capped by a dependency: the interpreter is ours to choose (``requires-python``);
  ``test_cpython_atexit_run_exitfuncs`` states what it must do.
* CPython's ``tokenize._compile`` (an ``lru_cache``): ``tests/test_resources_import.py``
  reads its size to count whether importing the models compiled tokenize's patterns; only
  a measurement, read only where it exists, its own test checks it counts on 3.11.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import socket
from typing import Any

import pytest

# --- aiosmtplib ---------------------------------------------------------------------------


async def _connected_protocol(proto_cls: type[Any]) -> tuple[Any, socket.socket]:
    """A protocol on one end of a socket pair; the test plays the server on the other."""
    ours, theirs = socket.socketpair()
    loop = asyncio.get_running_loop()
    proto = proto_cls()
    await loop.create_connection(lambda: proto, sock=ours)
    theirs.setblocking(False)
    return proto, theirs


def test_aiosmtplib_protocol_module_constants() -> None:
    from aiosmtplib import protocol

    assert isinstance(protocol.MAX_RESPONSE_LENGTH, int)
    assert protocol.MAX_RESPONSE_LENGTH >= 8192  # 32 KiB today: a reply's size bound
    assert isinstance(protocol.COMMAND_INJECTION_REGEX, re.Pattern)
    assert protocol.COMMAND_INJECTION_REGEX.search(b"MAIL FROM:<a>\r\nRCPT TO:<b>")
    assert not protocol.COMMAND_INJECTION_REGEX.search(b"MAIL FROM:<a@b.example>")


async def test_aiosmtplib_protocol_private_state() -> None:
    """The attributes ``_PipeliningProtocol`` reads and writes exist with these meanings."""
    from aiosmtplib.protocol import SMTPProtocol

    proto, server = await _connected_protocol(SMTPProtocol)
    try:
        missing = [a for a in ("_buffer", "_response_waiter", "_response_pending")
                   if not hasattr(proto, a)]
        assert not missing, f"aiosmtplib's SMTPProtocol no longer has {missing}"
        assert isinstance(proto._buffer, bytearray)
        assert isinstance(proto._response_waiter, asyncio.Future)
        assert proto._response_pending is True  # armed for the greeting on connect
        assert callable(proto._read_response_from_buffer)
        server.send(b"220 ready\r\n")
        reply = await proto.read_response(timeout=2)
        assert (reply.code, reply.message) == (220, "ready")
        # After a read: no command pending, a fresh waiter for the next one.
        assert proto._response_pending is False
        assert isinstance(proto._response_waiter, asyncio.Future)
        assert not proto._response_waiter.done()
    finally:
        server.close()


async def test_aiosmtplib_drops_replies_nobody_waits_for() -> None:
    """Why ``_PipeliningProtocol`` exists: the stock protocol discards bytes that arrive
    while ``_response_pending`` is False (pipelined replies do exactly that)."""
    from aiosmtplib.protocol import SMTPProtocol

    proto, server = await _connected_protocol(SMTPProtocol)
    try:
        server.send(b"220 ready\r\n")
        await proto.read_response(timeout=2)
        proto.data_received(b"250 unsolicited\r\n")
        assert proto._buffer == bytearray()
        assert not proto._response_waiter.done()
    finally:
        server.close()


async def test_aiosmtplib_read_response_from_buffer_parses_in_place() -> None:
    """``_read_response_from_buffer`` takes one complete reply off the front of
    ``_buffer`` and leaves the rest; a partial reply gives ``None``."""
    from aiosmtplib.protocol import SMTPProtocol

    proto, server = await _connected_protocol(SMTPProtocol)
    try:
        proto._buffer.extend(b"250-first\r\n250 second\r\n354 next\r\n221 partial")
        first = proto._read_response_from_buffer()
        assert (first.code, first.message) == (250, "first\nsecond")
        second = proto._read_response_from_buffer()
        assert (second.code, second.message) == (354, "next")
        assert proto._read_response_from_buffer() is None
        assert bytes(proto._buffer) == b"221 partial"
    finally:
        server.close()


async def test_pipelined_replies_survive_on_this_aiosmtplib() -> None:
    """``Wire.pipeline`` on the installed aiosmtplib: MAIL, RCPT and RSET in one write, the
    three replies in one segment (as Postfix sends them), read back in order."""
    from reconciler.probe.redact import Redactor
    from reconciler.probe.transcript import Transcript
    from reconciler.probe.wire import Wire

    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    loop = asyncio.get_running_loop()
    wire = Wire(Transcript(Redactor()))
    try:
        await wire.open(ours, tls=None, server_hostname=None, timeout=2)
        await loop.sock_sendall(theirs, b"220 ready\r\n")
        assert (await wire.read_reply(2)).code == 220
        assert wire.protocol is not None

        async def server() -> bytes:
            got = b""
            async with asyncio.timeout(2):
                while got.count(b"\r\n") < 3:
                    got += await loop.sock_recv(theirs, 4096)
            await loop.sock_sendall(
                theirs, b"250 2.1.0 sender ok\r\n250 2.1.5 rcpt ok\r\n250 2.0.0 reset\r\n")
            return got

        task = asyncio.create_task(server())
        replies = await wire.pipeline(["MAIL FROM:<a@b.test>", "RCPT TO:<c@d.test>", "RSET"],
                                      timeout=2)
        assert (await task).split(b"\r\n")[:3] == [
            b"MAIL FROM:<a@b.test>", b"RCPT TO:<c@d.test>", b"RSET"]
        assert [(r.code, r.message) for r in replies] == [
            (250, "2.1.0 sender ok"), (250, "2.1.5 rcpt ok"), (250, "2.0.0 reset")]
    finally:
        if wire.transport is not None:
            wire.transport.close()
        theirs.close()


# --- kmock (the Kubernetes API emulator's base) -----------------------------------------


def test_kmock_internal_modules_the_emulator_imports() -> None:
    from kmock._internal import apps, enums, rendering

    assert inspect.iscoroutinefunction(apps.RawHandler._handle)
    assert inspect.iscoroutinefunction(apps.RawHandler._render_error)
    assert {"WATCH", "LIST", "FETCH", "CREATE", "UPDATE", "DELETE"} <= set(
        enums.action.__members__)
    assert "PUT" in enums.method.__members__
    params = inspect.signature(rendering.Response).parameters
    assert {"status", "payload"} <= set(params)
    assert hasattr(rendering, "Request")


def test_kmock_methods_the_emulator_overrides_still_exist() -> None:
    """An override of a method kmock renamed would silently never be called."""
    from kmock import KubernetesEmulator

    for name in ("_handle", "_render_error", "_serve_fetch", "_serve_list", "_serve_watch",
                 "_serve_create", "_serve_update", "_serve_delete", "__attrs_post_init__"):
        assert callable(getattr(KubernetesEmulator, name, None)), (
            f"kmock.KubernetesEmulator has no {name}: the emulator's override is dead")
    assert hasattr(KubernetesEmulator, "fallback")


def test_kmock_parses_paths_through_the_patchable_module_function() -> None:
    """The emulator replaces ``parsing.parse_path`` (for ``/api/v1/namespaces/NAME``); that
    only works while kmock looks the function up on the module at request time."""
    from kmock._internal import parsing, rendering

    assert [f.name for f in __import__("attrs").fields(parsing.ParsedPath)] == [
        "group", "version", "plural", "namespace", "name", "subresource"]
    assert "parsing.parse_path(" in inspect.getsource(rendering)
    assert list(inspect.signature(parsing.parse_path).parameters) == ["path"]


@pytest.mark.parametrize("dist, cap", [("aiosmtplib", "5.2"), ("kmock", "0.9")])
def test_private_api_dependencies_are_capped(dist: str, cap: str) -> None:
    """A dependency whose private parts we use may not float to its next minor release
    untested: pyproject.toml caps it (lift the cap together with the contracts above)."""
    import tomllib
    from pathlib import Path

    from packaging.requirements import Requirement

    data = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    reqs = [*data["project"]["dependencies"],
            *(r for extra in data["project"]["optional-dependencies"].values() for r in extra)]
    spec = next(Requirement(r).specifier for r in reqs if Requirement(r).name == dist)
    assert f"<{cap}" in {str(s) for s in spec}, (dist, str(spec))


# --- aiohttp ------------------------------------------------------------------------------


def test_aiohttp_builds_its_fallback_contexts_at_import() -> None:
    """What ``reconciler/stores/aiohttpimport.py`` saves: importing aiohttp builds two SSL
    contexts in ``aiohttp.connector`` that load the default CA file (``SSL_CERT_FILE``,
    when set, instead of the system's).  (That a connector given its own context uses it
    is public behaviour: every operator test connects with the emulator's own CA.)"""
    import os
    import ssl
    import subprocess
    import sys

    code = (
        "import aiohttp.connector as c\n"
        "print(c._SSL_CONTEXT_VERIFIED.cert_store_stats()['x509_ca'],"
        " c._SSL_CONTEXT_UNVERIFIED.cert_store_stats()['x509_ca'])\n")
    system = ssl.create_default_context().cert_store_stats()["x509_ca"]
    env = {k: v for k, v in os.environ.items() if k != "SSL_CERT_FILE"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True, env=env).stdout.split()
    assert out == [str(system), str(system)], out
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True, env={**env, "SSL_CERT_FILE": os.devnull}
                         ).stdout.split()
    assert out == ["0", "0"], out


# --- CPython ------------------------------------------------------------------------------


def test_cpython_atexit_run_exitfuncs() -> None:
    """``exit_now`` relies on ``atexit._run_exitfuncs`` running every registered handler,
    last registered first, once, in the calling thread, with what they print reaching a
    flushed stdout before ``os._exit``."""
    import subprocess
    import sys

    code = (
        "import atexit, os, sys\n"
        "atexit.register(print, 'first registered')\n"
        "atexit.register(print, 'second registered')\n"
        "atexit._run_exitfuncs()\n"
        "atexit._run_exitfuncs()\n"  # the handlers ran already: nothing more
        "sys.stdout.flush()\n"
        "os._exit(7)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 7, out.stderr
    assert out.stdout.splitlines() == ["second registered", "first registered"], out.stdout
