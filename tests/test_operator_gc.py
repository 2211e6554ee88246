"""The operator process's garbage-collector settings (reconciler/cli/cmd_operator.py)."""

from __future__ import annotations

import subprocess
import sys


def test_the_operator_freezes_start_up_objects_and_collects_less_often() -> None:
    # In a child interpreter: the settings are process-wide, not for the test runner's.
    code = (
        "import gc, weakref\n"
        "from reconciler.cli.cmd_operator import GC_THRESHOLD, tune_gc\n"
        "before = gc.get_threshold()\n"
        "tune_gc()\n"
        "assert gc.get_threshold() == GC_THRESHOLD != before, gc.get_threshold()\n"
        "assert gc.get_freeze_count() > 10_000, gc.get_freeze_count()\n"
        "class C: pass\n"
        "a = C(); a.me = a; ref = weakref.ref(a); del a\n"  # a cycle made after start-up
        "gc.collect()\n"
        "assert ref() is None\n"  # is still collected
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
