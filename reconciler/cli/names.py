"""Resource names on the command line, and the one namespace rule.

The names are the CRDs' (``manifests/crds/``: plural, singular, short names, category),
so ``smtpctl get esmtp`` and ``kubectl get esmtp`` mean the same thing; a test compares
this table with the generated CRDs.  Arguments name objects as ``KIND NAME...``,
``KIND/NAME...`` or, for lists, ``KIND1,KIND2``.

Namespace rule (every command): ``-n NS`` restricts to NS.  Without it, a NAME is looked
up in every namespace: found when exactly one namespace holds it, otherwise an error that
lists where it is.  With ``-n NS`` and the name only elsewhere, the error says where.
Lists show every namespace unless ``-n`` is given.

Imports nothing heavy: ``validate`` and ``--help`` load this module.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

API_GROUP = "smtp.reconciler.dev"
KIND_SMTP = "ExternalSmtp"
KIND_OAUTH2 = "OAuth2Provider"


@dataclass(frozen=True)
class ResourceNames:
    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    categories: tuple[str, ...]

    @property
    def words(self) -> tuple[str, ...]:
        """Every word that names this kind (lower case), as kubectl accepts them."""
        base = (self.singular, self.plural, *self.short_names, self.kind.lower())
        qualified = tuple(f"{w}.{API_GROUP}" for w in (self.singular, self.plural))
        return tuple(dict.fromkeys(base + qualified))


RESOURCES: tuple[ResourceNames, ...] = (
    ResourceNames(KIND_SMTP, "externalsmtps", "externalsmtp", ("esmtp",), ("smtp",)),
    ResourceNames(KIND_OAUTH2, "oauth2providers", "oauth2provider", ("oauth2p",), ("smtp",)),
)
"""In the order lists print them: relays first (what people look for), then providers."""

BY_KIND = {r.kind: r for r in RESOURCES}
ALL_WORDS = ("all", "smtp")
"""``all`` and the CRDs' category ``smtp`` name both kinds."""


class NameError_(ValueError):
    """A resource argument that names nothing (exit 2, with the valid words)."""


def valid_words() -> str:
    words = [w for r in RESOURCES for w in (r.singular, *r.short_names)]
    return ", ".join([*words, *ALL_WORDS])


def kinds_of(word: str) -> list[str]:
    """The kinds ``word`` names: one kind, or both for ``all``/``smtp``; comma lists allowed.

    Raises :class:`NameError_` for an unknown word."""
    out: list[str] = []
    for part in word.split(","):
        w = part.strip().lower()
        if w in ALL_WORDS:
            out.extend(r.kind for r in RESOURCES)
            continue
        for r in RESOURCES:
            if w in r.words:
                out.append(r.kind)
                break
        else:
            raise NameError_(f"unknown resource type {part!r} (one of: {valid_words()})")
    return list(dict.fromkeys(out))


def kind_of(word: str) -> str | None:
    """The single kind ``word`` names, or None (unknown word, or a category)."""
    try:
        kinds = kinds_of(word)
    except NameError_:
        return None
    return kinds[0] if len(kinds) == 1 else None


class Target(NamedTuple):
    kinds: tuple[str, ...]
    name: str | None


def parse_targets(words: Sequence[str], *, default: str | None = "all") -> list[Target]:
    """``KIND``, ``KIND NAME...``, ``KIND/NAME...`` (several, kinds may differ).

    ``default`` is the type when ``words`` is empty (``get`` lists everything)."""
    if not words:
        if default is None:
            raise NameError_(f"give a resource type (one of: {valid_words()})")
        return [Target(tuple(kinds_of(default)), None)]
    if any("/" in w for w in words):
        out = []
        for w in words:
            kind, sep, name = w.partition("/")
            if not sep or not kind or not name:
                raise NameError_(f"{w!r}: expected KIND/NAME (do not mix KIND/NAME with "
                                 "KIND NAME)")
            out.append(Target(tuple(kinds_of(kind)), name))
        return out
    kinds = tuple(kinds_of(words[0]))
    if len(words) == 1:
        return [Target(kinds, None)]
    return [Target(kinds, n) for n in words[1:]]


def display_kind(kind: str) -> str:
    return BY_KIND[kind].singular if kind in BY_KIND else kind.lower()


# --- the namespace rule ----------------------------------------------------------------------


class LookupProblem(LookupError):
    """A name that is missing or ambiguous; the message says where it is (exit 1)."""

    def __init__(self, message: str, *, ambiguous: bool = False) -> None:
        super().__init__(message)
        self.ambiguous = ambiguous


def find(objs: Iterable[Any], kinds: Sequence[str], name: str, namespace: str | None) -> Any:
    """The one object named ``name`` of ``kinds`` by the namespace rule.

    ``objs`` are stored objects of every namespace (anything with ``.ref.kind``,
    ``.ref.namespace``, ``.ref.name``)."""
    matches = [o for o in objs if o.ref.kind in kinds and o.ref.name == name]
    what = " or ".join(kinds) if len(kinds) <= 2 else "resource"
    if namespace is not None:
        here = [o for o in matches if o.ref.namespace == namespace]
        if len(here) == 1:
            return here[0]
        if len(here) > 1:  # one name, two kinds (get all NAME)
            kinds_here = ", ".join(sorted(o.ref.kind for o in here))
            raise LookupProblem(f"{name!r} names {len(here)} resources in namespace "
                                f"{namespace}: give the kind ({kinds_here})", ambiguous=True)
        elsewhere = sorted({o.ref.namespace for o in matches})
        hint = (f"; it exists in namespace {_list(elsewhere)} (use -n {elsewhere[0]})"
                if elsewhere else "")
        raise LookupProblem(f"{what} {name!r} not found in namespace {namespace}{hint}")
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise LookupProblem(f"{what} {name!r} not found in any namespace")
    spots = sorted(f"{o.ref.namespace}" for o in matches)
    if len(set(spots)) == len(spots):
        raise LookupProblem(f"{what} {name!r} exists in namespaces {_list(spots)}: pick one "
                            f"with -n NAMESPACE", ambiguous=True)
    found = ", ".join(sorted(f"{o.ref.kind} in {o.ref.namespace}" for o in matches))
    raise LookupProblem(f"{name!r} names several resources ({found}): give the kind and "
                        "-n NAMESPACE", ambiguous=True)


def _list(items: Sequence[str]) -> str:
    return ", ".join(items)
