"""``smtpctl`` ends its process without the interpreter's teardown (``exit_now``), and
that changes nothing anyone can observe: the exit code, everything printed, the exit
handlers (``atexit``: logging, coverage), and a thread still running is waited for."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)


def test_the_exit_code_output_and_exit_handlers_are_kept() -> None:
    out = _run("""
import atexit, logging, sys
from reconciler.cli.main import exit_now
logging.basicConfig(stream=sys.stderr)
atexit.register(lambda: print("handler ran", flush=False))
sys.stdout.write("x" * 200000)  # buffered: exit_now flushes it
print("\\nlast line", end="")
logging.getLogger("t").warning("logged")
exit_now(3)
""")
    assert out.returncode == 3, out.stderr
    assert out.stdout.startswith("x" * 200000)
    assert out.stdout.endswith("last line" + "handler ran\n"), out.stdout[-40:]
    assert "WARNING:t:logged" in out.stderr


def test_a_thread_still_running_is_waited_for() -> None:
    proc = subprocess.Popen([sys.executable, "-c", """
import sys, threading
from reconciler.cli.main import exit_now
def reader():
    sys.stdin.read()  # until the test closes our stdin
    print("thread done", flush=True)
threading.Thread(target=reader).start()
print("main done", flush=True)
exit_now(4)
"""], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=ROOT)
    assert proc.stdout is not None and proc.stdin is not None
    assert proc.stdout.readline() == "main done\n"
    proc.stdin.close()  # only now can the thread end
    assert proc.wait(timeout=60) is not None
    rest, err = proc.stdout.read(), proc.stderr.read() if proc.stderr else ""
    assert proc.returncode == 4, err
    assert rest == "thread done\n"


def test_the_console_entry_exits_with_the_command_code(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: smtp.reconciler.dev/v1alpha1\nkind: ExternalSmtp\n"
                   "metadata: {name: a}\nspec: {port: 25}\n")
    out = _run("import sys; from reconciler.cli.main import entry; sys.argv[1:] = "
               f"['validate', {str(bad)!r}, '-o', 'json']; entry()")
    assert out.returncode == 1, out.stderr
    assert out.stdout.rstrip().endswith("}") and '"valid": false' in out.stdout, out.stdout
