"""Transcripts are redacted when first read, never less than eagerly, and a passed test's
transcript is not built at all by apply (it is not kept: only failures' are)."""

from __future__ import annotations

import asyncio
import pickle

import pytest

from reconciler.probe import run_probe
from reconciler.probe.redact import Redactor
from reconciler.probe.transcript import Transcript
from reconciler.probe.verdict import ProbeCredentials, Verdict
from reconciler.resources import ExternalSmtpSpec
from reconciler.secret import MASK, Secret
from reconciler.stores.base import ObjectRef
from reconciler.stores.local import LocalStore
from tests.support import canary
from tests.support.engine_env import Env, e2e_fixture  # noqa: F401


class CountingRedactor(Redactor):
    calls = 0

    def __call__(self, text: str, *, one_line: bool = False) -> str:
        CountingRedactor.calls += 1
        return super().__call__(text, one_line=one_line)


def test_lines_are_redacted_on_first_read_with_every_secret_known_by_then() -> None:
    red = CountingRedactor()
    t = Transcript(red)
    t.reply(250, f"echo {canary.PASSWORD}")  # before the secret is known
    t.client("AUTH PLAIN ******")
    red.add(Secret(canary.PASSWORD))  # registered later in the dialogue
    view = t.view()
    CountingRedactor.calls = 0
    assert CountingRedactor.calls == 0  # nothing built yet
    lines = [x.line for x in view]
    assert lines == [f"250 echo {MASK}", "AUTH PLAIN ******"]
    assert CountingRedactor.calls == 2
    assert [x.line for x in view] == lines and CountingRedactor.calls == 2  # built once
    assert view == tuple(view) and len(view) == 2 and view[0].line == lines[0]
    canary.assert_no_canary(repr(view), where="repr of a transcript view")
    # it pickles as its redacted lines, never the raw record or the redactor
    data = pickle.dumps(view)
    assert canary.PASSWORD.encode() not in data
    assert pickle.loads(data) == tuple(view)


def test_lazy_lines_keep_the_bounds() -> None:
    from reconciler.probe.transcript import MAX_LINES

    t = Transcript(Redactor())
    for i in range(MAX_LINES + 5):
        t.reply(250, f"line {i}\nmore")  # two lines per reply
    lines = t.lines()
    assert len(lines) == MAX_LINES + 1
    assert lines[-1].line.endswith("more lines not recorded]")


def test_apply_keeps_only_failed_transcripts(e2e: Env) -> None:
    good = e2e.smtp("good", selected=True)
    bad = e2e.smtp("bad", user="nobody@example.test")
    e2e.cli("apply", "-f", str(e2e.write("fleet.yaml", good, bad)))
    with LocalStore(e2e.state, create=False) as store:
        [passed] = store.tests_sync(ObjectRef("ExternalSmtp", "default", "good"))
        [failed] = store.tests_sync(ObjectRef("ExternalSmtp", "default", "bad"))
    assert passed["passed"] and passed["transcript"] == []
    assert not failed["passed"]
    assert any(t["line"] == "AUTH PLAIN ******" for t in failed["transcript"])


def test_a_passed_probe_builds_no_transcript_unless_read(e2e: Env) -> None:
    spec = ExternalSmtpSpec.model_validate({
        "host": "127.0.0.1", "port": e2e.relay.port, "authentication": "UsernamePassword",
        "startTLS": True, "username": "app@example.test", "passwordFrom": {"env": "SMTP_PW"}})
    creds = ProbeCredentials(password=Secret(canary.PASSWORD), ca_bundle_pem=e2e.relay.ca_pem)
    import reconciler.probe.runner as runner

    verdicts: list[Verdict] = []

    async def main() -> None:  # not asyncio.run(run_probe()): 3.11's runner reprs its result
        verdicts.append(await run_probe(spec, creds))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner, "Redactor", CountingRedactor)
        CountingRedactor.calls = 0
        asyncio.run(main())
        [v] = verdicts
        assert v.passed and CountingRedactor.calls == 0  # the dialogue was not redacted
        assert any(t.line == "AUTH PLAIN ******" for t in v.transcript)  # -v reads it
        assert CountingRedactor.calls > 0


def test_a_passed_probe_builds_no_masking_forms_until_a_line_is_read(e2e: Env) -> None:
    """The forms of a secret (URL-quoted, hex, skeletons, ...) are built on the first mask,
    not when the secret is registered: a passed test never masks, so never builds them."""
    import reconciler.probe.redact as redact

    spec = ExternalSmtpSpec.model_validate({
        "host": "127.0.0.1", "port": e2e.relay.port, "authentication": "UsernamePassword",
        "startTLS": True, "username": "app@example.test", "passwordFrom": {"env": "SMTP_PW"}})
    creds = ProbeCredentials(password=Secret(canary.PASSWORD), ca_bundle_pem=e2e.relay.ca_pem)
    built: list[bytes] = []
    real_forms = redact._forms

    def counting_forms(raw: bytes) -> set[str]:
        built.append(raw)
        return real_forms(raw)

    verdicts: list[Verdict] = []

    async def main() -> None:
        verdicts.append(await run_probe(spec, creds))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(redact, "_forms", counting_forms)
        asyncio.run(main())
        [v] = verdicts
        assert v.passed and built == []  # the password and the AUTH payload: registered only
        lines = [t.line for t in v.transcript]  # -v reads it: now every form is built
        assert built and canary.PASSWORD.encode() in built
    assert "AUTH PLAIN ******" in lines
    canary.assert_no_canary("\n".join(lines), where="a passed test's transcript")


def test_forms_are_rebuilt_when_a_secret_is_added_after_a_mask() -> None:
    red = Redactor()
    red.add(Secret("first-secret-value"))
    assert red.mask("x first-secret-value y") == f"x {MASK} y"
    red.add(Secret("second-secret-value"))  # after the forms were built once
    assert red.mask("second-secret-value and FIRST-SECRET-VALUE") == f"{MASK} and {MASK}"
