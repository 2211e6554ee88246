"""``plan``: what ``apply`` would do, without side effects (Terraform's plan/apply split).

For each input manifest: create / update (field-level diff of the spec; generation would
be bumped) / metadata-only / unchanged, and whether a connection test would run and why
(new, spec changed, secrets or provider changed, re-verification due, last test failed,
never tested).  Credentials are resolved (to compute secret versions) but nothing is
tested or written.  Prune candidates are listed by the runtime.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from reconciler.credentials.policy import MANIFEST_ANNOTATION
from reconciler.engine.assess import Assessment, assess
from reconciler.engine.digest import canonical
from reconciler.engine.world import World
from reconciler.resources import KIND_OAUTH2, KIND_SMTP
from reconciler.stores.base import ObjectRef, StoredObject


@dataclass(frozen=True, slots=True)
class PlanItem:
    ref: ObjectRef
    action: str  # create | update | metadata | unchanged | prune
    diff: list[str] = field(default_factory=list)
    test: bool = False
    why: str = ""
    generation: int | None = None

    @property
    def changes(self) -> bool:
        return self.action != "unchanged" or self.test


def spec_diff(old: Any, new: Any, path: str = "spec") -> list[str]:
    """Field-level differences (``spec.port: 587 -> 2525``); values are never secrets
    (a manifest holds only references)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new)):
            sub = f"{path}.{k}"
            if k not in old:
                out.append(f"{sub}: (unset) -> {canonical(new[k])}")
            elif k not in new:
                out.append(f"{sub}: {canonical(old[k])} -> (unset)")
            else:
                out.extend(spec_diff(old[k], new[k], sub))
        return out
    return [] if old == new else [f"{path}: {canonical(old)} -> {canonical(new)}"]


async def plan_one(manifest: dict[str, Any], stored: StoredObject | None, world: World,
                   ) -> PlanItem:
    """What ``apply`` of ``manifest`` would do to ``stored`` (None: it does not exist).

    For an ExternalSmtp the decision is the engine's own (:func:`assess`, the function
    ``reconcile`` uses) applied to the object as it would be stored after the apply."""
    meta = manifest.get("metadata") or {}
    ref = ObjectRef(str(manifest["kind"]), str(meta.get("namespace", "default")),
                    str(meta["name"]))
    if stored is None:
        return PlanItem(ref, "create", test=ref.kind == KIND_SMTP, why="new resource",
                        generation=1)
    old_spec = stored.manifest.get("spec") or {}
    new_spec = manifest.get("spec") or {}
    diff = spec_diff(old_spec, new_spec)
    if diff:
        action, generation = "update", stored.generation + 1
    else:
        old_meta = _without_origin(stored.manifest.get("metadata") or {})
        new_meta = {k: v for k, v in _without_origin(meta).items()
                    if k not in ("generation", "uid", "resourceVersion", "creationTimestamp")}
        action = "metadata" if canonical(old_meta) != canonical(new_meta) else "unchanged"
        generation = stored.generation
    if ref.kind == KIND_OAUTH2:
        return PlanItem(ref, action, diff, generation=generation)
    after = replace(stored, manifest=manifest, generation=generation)
    a = await assess(after, world)
    return PlanItem(ref, action, diff, test=_tests(a), why=a.why, generation=generation)


def _without_origin(meta: dict[str, Any]) -> dict[str, Any]:
    """Metadata without the loader's record of the manifest's file (a new checkout path
    is not a change; see credentials.policy.MANIFEST_ANNOTATION)."""
    out = dict(meta)
    notes = {k: v for k, v in (out.get("annotations") or {}).items()
             if k != MANIFEST_ANNOTATION}
    if notes:
        out["annotations"] = notes
    else:
        out.pop("annotations", None)
    return out


def _tests(a: Assessment) -> bool:
    """Whether apply would run a test (or try to: a block that apply may clear first, such
    as a provider in the same input, counts as a test that would be attempted)."""
    return a.decision in ("test", "blocked")

