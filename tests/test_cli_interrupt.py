"""Ctrl-C before a command runs (while its module is imported) is ``interrupted`` and exit
130, as it is while the command runs - not a KeyboardInterrupt traceback (exit -2)."""

from __future__ import annotations

import pytest

from reconciler.cli import main as cli_main


def test_ctrl_c_while_the_command_is_imported(monkeypatch: pytest.MonkeyPatch,
                                              capfd: pytest.CaptureFixture[str]) -> None:
    loaded: list[str] = []

    def interrupted_import(name: str) -> cli_main.CommandModule | None:
        loaded.append(name)
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_main, "_load", interrupted_import)
    monkeypatch.setattr("sys.argv", ["smtpctl", "apply", "-f", "x.yaml"])
    with pytest.raises(SystemExit) as exc:
        cli_main.entry()
    assert exc.value.code == 130
    assert loaded == ["apply"]
    err = capfd.readouterr().err
    assert err == "interrupted\n"


def test_entry_exits_with_mains_code(monkeypatch: pytest.MonkeyPatch,
                                     capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.argv", ["smtpctl", "no-such-command"])
    with pytest.raises(SystemExit) as exc:
        cli_main.entry()
    assert exc.value.code == 2
    assert "unknown command 'no-such-command'" in capfd.readouterr().err
