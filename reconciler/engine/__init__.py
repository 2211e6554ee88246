"""The reconcile engine: one idempotent pass per resource, shared by every runtime.

Public API (see the module docstrings):

* ``reconciler.engine.reconcile.reconcile(obj, world) -> ReconcileResult``
* ``reconciler.engine.world.World`` (protocol), ``BasicWorld``, ``Limits``
* ``reconciler.engine.selection.select_scope(namespace, world)`` and the pure ``choose``
* ``reconciler.engine.active`` - the consumable forms of the selected relay

The engine talks to ``reconciler.stores.base.Store``; it never imports sqlite, a
Kubernetes client, or the SMTP/OAuth stacks (those arrive as functions in the World).
"""
