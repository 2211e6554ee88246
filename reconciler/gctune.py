"""Cyclic garbage collection for smtpctl's long-running processes: one setting for all.

Almost all of smtpctl's garbage is acyclic (freed by reference counting, which this does
not change), but CPython's default thresholds (700, 10, 10) run the cyclic collector
hundreds of times per thousand relays, its full collections traversing every live
object: 0.26 s of a first ``apply`` of 3,000 relays' 3.9 s of CPU (0.06 s with this),
1.26 s of the operator's 11.2 s in a 3,000-resource first pass (0.15 s), ~2 % of a probe
worker's CPU per test.  :func:`tune_gc` freezes what is alive now (never traversed again;
still freed by reference counting) and collects the youngest generation every 20,000
allocations instead of 700; cycles (an exception's traceback) are still collected, a
little later.  Called by the console script's ``entry()`` (not when ``main()`` is called
by a program or a test with a heap of its own), again by the operator once its modules
are imported, and by each probe worker.
"""

from __future__ import annotations

import gc

GC_THRESHOLD = (20_000, 10, 10)  # the youngest generation's; then CPython's defaults


def tune_gc() -> None:
    """Freeze the objects alive now and collect the youngest generation less often."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)
