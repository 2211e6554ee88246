"""The Kubernetes operator: the engine driven by list+watch streams.

One module per concern, settings passed explicitly:

* :mod:`.settings` - :class:`OperatorConfig` and the constants (finalizer name, requeue);
* :mod:`.main` - wiring and the entry point :func:`run_operator`;
* :mod:`.watching` - the watch streams, dispatched to the controller;
* :mod:`.controller` - watch events -> cache, dependency index, workers, finalizers;
* :mod:`.index` - which resources use which Secret / OAuth2Provider;
* :mod:`.workers` - one worker task per resource, bounded pass slots, backoff;
* :mod:`.finalizers` - adding and removing ``smtp.reconciler.dev/finalizer``;
* :mod:`.health` - ``/healthz``, ``/readyz``, ``/metrics``.

Beside the package: :mod:`reconciler.runtimes.leader` (Lease election on its own thread),
:mod:`reconciler.runtimes.publish` (the published Secret),
:mod:`reconciler.runtimes.secretcache` (referenced Secrets served from memory),
:mod:`reconciler.runtimes.metrics` and :mod:`reconciler.runtimes.logjson`.
"""

from reconciler.runtimes.operator.main import run_operator
from reconciler.runtimes.operator.settings import FINALIZER, OperatorConfig

__all__ = ["FINALIZER", "OperatorConfig", "run_operator"]
