"""``plan``: what ``apply`` would do, without side effects (Terraform's plan/apply split).

For each input manifest: create / update (field-level diff of the spec; generation would
be bumped) / metadata-only / unchanged, and whether a connection test would run and why
(new, spec changed, secrets or provider changed, re-verification due, last test failed,
never tested).  Credentials are resolved (to compute secret versions) but nothing is
tested or written.  Prune candidates are listed by the runtime.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from reconciler.credentials.base import CredentialError
from reconciler.engine import conditions as cond
from reconciler.engine.digest import canonical, plan_digest, tested_spec
from reconciler.engine.world import World
from reconciler.resources import KIND_OAUTH2, KIND_SMTP, ExternalSmtp, OAuth2Provider
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
        test, why = True, "spec changed"
        if ref.kind == KIND_SMTP and canonical(tested_spec(old_spec)) == canonical(
                tested_spec(new_spec)):
            test, why = await _needs_test(manifest, stored, world)
            if not test:
                why = "connection settings unchanged (only untested fields changed)"
        return PlanItem(ref, "update", diff, test=ref.kind == KIND_SMTP and test,
                        why=why, generation=stored.generation + 1)
    old_meta = {k: v for k, v in (stored.manifest.get("metadata") or {}).items()}
    action = "metadata" if canonical(old_meta) != canonical(
        {k: v for k, v in meta.items()
         if k not in ("generation", "uid", "resourceVersion", "creationTimestamp")}
    ) else "unchanged"
    if ref.kind == KIND_OAUTH2:
        return PlanItem(ref, action, generation=stored.generation)
    test, why = await _needs_test(manifest, stored, world)
    return PlanItem(ref, action, test=test, why=why, generation=stored.generation)


async def _needs_test(manifest: dict[str, Any], stored: StoredObject, world: World,
                      ) -> tuple[bool, str]:
    memo = stored.memo
    if memo is None or not memo.digest:
        return True, "never tested"
    try:
        res = ExternalSmtp.model_validate(manifest)
    except ValidationError:
        return False, "invalid"
    provider: OAuth2Provider | None = None
    versions: dict[str, str] = {}
    pref = res.spec.oauth2_provider_ref
    if pref is not None:
        pobj = await world.store.get(ObjectRef(KIND_OAUTH2, stored.ref.namespace, pref.name))
        if pobj is None or not cond.is_true(pobj.status, cond.READY):
            return True, f"OAuth2Provider {pref.name!r} is not Ready"
        provider = OAuth2Provider.model_validate(pobj.manifest)
        versions["oauth2Provider"] = pobj.memo.digest if pobj.memo else ""
    try:
        creds = await world.resolve_credentials(res, provider)
    except CredentialError as exc:
        return True, f"credentials cannot be resolved ({exc.reason})"
    versions.update(creds.versions)
    digest = plan_digest(tested_spec(res.spec.model_dump(by_alias=True, mode="json")), versions)
    if digest != memo.digest:
        return True, "secrets or provider changed"
    now = world.clock()
    if now >= memo.due_at:
        return True, ("re-verification due" if memo.passed else "retry of a failed test due")
    left = memo.due_at - now
    if not memo.passed:
        return False, f"last test failed; next retry in {_human(left)}"
    return False, f"tested; next re-verification in {_human(left)}"


def _human(seconds: float) -> str:
    from reconciler.resources import format_duration

    return format_duration(seconds)
