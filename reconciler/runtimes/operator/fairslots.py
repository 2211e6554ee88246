"""The operator's pass slots are :class:`reconciler.engine.fairslots.FairSlots` (shared with
the connection-test limits of every runtime); kept here for the operator's imports."""

from __future__ import annotations

from reconciler.engine.fairslots import FairSlots

__all__ = ["FairSlots"]
