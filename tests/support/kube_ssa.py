"""Server-side apply and ``managedFields``, as the API server computes them.

Written from the rules of ``sigs.k8s.io/structured-merge-diff`` (v6: ``fieldpath``,
``typed``, ``merge``) and of the API server's field manager
(``k8s.io/apimachinery/pkg/util/managedfields/internal``); no code is copied.  What it does:

* **Schema-aware values** (:class:`Type`): scalars, *granular* maps (each key its own
  field; struct fields from ``properties``, other keys from ``additionalProperties``),
  *atomic* maps (``x-kubernetes-map-type: atomic``), lists that are ``atomic`` (the CRD
  default), ``set`` (items are ``v:<value>``) or ``map`` (items are
  ``k:{"key":value}``, keyed by ``x-kubernetes-list-map-keys``, key defaults from the
  schema).  ``x-kubernetes-preserve-unknown-fields`` and kinds without a schema are
  *deduced*: maps granular, lists atomic (SMD's ``__untyped_deduced_``).  ``metadata`` is
  ``ObjectMeta`` (labels/annotations granular maps, ``finalizers`` a set,
  ``ownerReferences`` a map list keyed by ``uid``).
* **Field sets** (``fieldpath.Set``) as frozensets of paths, their ``FieldsV1`` encoding
  (``f:``/``k:``/``v:``/``i:`` and ``.``) and SMD's path notation in messages
  (``.status.conditions[type="Ready"]``).
* ``to_field_set`` (``typed/tofieldset.go``), ``compare`` (``typed/compare.go``),
  ``merge`` (``typed/merge.go``, including its list ordering), ``remove_items``
  (``typed/remove.go``), ``ensure_named_fields_are_members`` and the typed validation of
  an applied configuration (``typed/validate.go``: "field not declared in schema").
* :class:`FieldManager`: ``Updater.Update``/``Updater.Apply`` (``merge/update.go``: ownership
  moves to the writer on updates; apply conflicts with every other manager whose fields it
  changes unless forced; ``prune`` removes what an applier stops applying when nobody else
  owns it), the layers of ``NewDefaultFieldManager`` (strip the system metadata fields,
  manager identity ``{manager, operation, apiVersion, subresource}``, timestamps only
  when something changed, at most 10 update managers before ``ancient-changes``,
  ``before-first-apply`` for objects that had no managedFields, and the
  ``kubectl.kubernetes.io/last-applied-configuration`` hand-over from client-side to
  server-side apply for the manager ``kubectl``), reset fields (``status`` on the main
  resource of a kind with a status subresource; ``metadata`` and ``spec`` on ``/status``)
  and the conflict error (409, causes ``FieldManagerConflict``, the real message).

Approximations (docs/operator.md): one served version per kind (no conversion between
managers' apiVersions); managed sets are not reconciled after a CRD changes a field from
atomic to granular; built-in kinds are deduced except the list keys in
:data:`BUILTIN_LIST_KEYS`; scalar type errors word the got-value in Python terms.
"""

from __future__ import annotations

import copy
import datetime
import functools
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]
PE = tuple[str, Any]  # ("f", name) | ("k", ((name, json), ...)) | ("v", json) | ("i", n)
Path = tuple[PE, ...]
FieldSet = frozenset[Path]
EMPTY: FieldSet = frozenset()


class _Missing:
    """An absent value (SMD's nil ``value.Value``), distinct from JSON ``null``."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


# --- values --------------------------------------------------------------------------


def go_json(value: Any) -> str:
    """JSON as Go's encoding/json writes it (sorted keys, HTML characters escaped)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def same(a: Any, b: Any) -> bool:
    """``value.Equals``: deep equality where a boolean is never a number."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and bool(a == b)


def _value_key(v: Any) -> tuple[int, Any]:
    """``value.Compare``'s order: numbers, strings, booleans, lists, maps, null."""
    if isinstance(v, bool):
        return (2, int(v))
    if isinstance(v, int | float):
        return (0, float(v))
    if isinstance(v, str):
        return (1, v)
    if isinstance(v, list):
        return (3, tuple(_value_key(x) for x in v))
    if isinstance(v, dict):
        return (4, tuple((k, _value_key(v[k])) for k in sorted(v)))
    return (5, 0)


def pe_key(pe: PE) -> tuple[Any, ...]:
    """``PathElement.Compare``: field names, then keys, then values, then indexes."""
    kind, payload = pe
    if kind == "f":
        return (0, payload)
    if kind == "k":
        return (1, tuple((n, _value_key(json.loads(j))) for n, j in payload))
    if kind == "v":
        return (2, _value_key(json.loads(payload)))
    return (3, payload)


def _go_string(v: Any) -> str:
    """``value.ToString``: strings quoted, numbers and booleans bare."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, list):
        return "[" + ",".join(_go_string(x) for x in v) + "]"
    if isinstance(v, dict):
        return "".join(f"{k}={_go_string(v[k])}" for k in sorted(v))
    return str(v)


def pe_string(pe: PE) -> str:
    """``PathElement.String``: ``.name``, ``[k=v,...]``, ``[=v]``, ``[i]``."""
    kind, payload = pe
    if kind == "f":
        return "." + str(payload)
    if kind == "k":
        return "[" + ",".join(f"{n}={_go_string(json.loads(j))}" for n, j in payload) + "]"
    if kind == "v":
        return f"[={_go_string(json.loads(payload))}]"
    return f"[{payload}]"


def path_string(path: Path) -> str:
    return "".join(pe_string(pe) for pe in path)


def field_pe(name: str) -> PE:
    return ("f", name)


# --- field sets and FieldsV1 ---------------------------------------------------------


def _trie(paths: Iterable[Path]) -> dict[PE, Any]:
    """{pe: [is_member, children]}"""
    root: dict[PE, Any] = {}
    for path in paths:
        node = root
        for i, pe in enumerate(path):
            entry = node.setdefault(pe, [False, {}])
            if i == len(path) - 1:
                entry[0] = True
            node = entry[1]
    return root


def iterate(paths: FieldSet) -> list[Path]:
    """The paths in ``Set.Iterate`` order: a level's members, then its children in order."""
    out: list[Path] = []

    def walk(node: dict[PE, Any], prefix: Path) -> None:
        ordered = sorted(node, key=pe_key)
        out.extend((*prefix, pe) for pe in ordered if node[pe][0])
        for pe in ordered:
            if node[pe][1]:
                walk(node[pe][1], (*prefix, pe))

    walk(_trie(paths), ())
    return out


def serialize_pe(pe: PE) -> str:
    kind, payload = pe
    if kind == "f":
        return f"f:{payload}"
    if kind == "k":
        return "k:{" + ",".join(f"{json.dumps(n)}:{j}" for n, j in payload) + "}"
    if kind == "v":
        return f"v:{payload}"
    return f"i:{payload}"


def to_fields_v1(paths: FieldSet) -> Obj:
    """``Set.ToJSON``: a member with children carries ``"."``.

    The same set gives the same object, shared by the objects that store it (the emulator
    never changes a stored object in place): no copy per write, and decoding it back
    (:func:`from_fields_v1`) is a look-up."""
    return _fields_v1_obj(paths)


# id -> (object, set) of the FieldsV1 objects handed out (the object is held, so its id is
# not reused while it is here); bounded: a miss only means decoding the JSON again.
_HANDED_OUT: dict[int, tuple[Obj, FieldSet]] = {}
HANDED_OUT_LIMIT = 16384


@functools.lru_cache(maxsize=8192)
def _fields_v1_obj(paths: FieldSet) -> Obj:
    out: Obj = json.loads(_fields_v1_json(paths))
    if len(_HANDED_OUT) >= HANDED_OUT_LIMIT:
        _HANDED_OUT.clear()
    _HANDED_OUT[id(out)] = (out, paths)
    return out


@functools.lru_cache(maxsize=8192)
def _fields_v1_json(paths: FieldSet) -> str:

    def emit(node: dict[PE, Any], include_self: bool) -> Obj:
        out: Obj = {}
        if include_self and node:
            out["."] = {}
        for pe in sorted(node, key=pe_key):
            member, children = node[pe]
            out[serialize_pe(pe)] = emit(children, member) if children else {}
        return out

    return json.dumps(emit(_trie(paths), False))


def parse_pe(text: str) -> PE:
    if len(text) < 2 or text[1] != ":":
        raise ValueError(f"bad path element {text!r}")
    kind, rest = text[0], text[2:]
    if kind == "f":
        return ("f", rest)
    if kind == "v":
        return ("v", go_json(json.loads(rest)))
    if kind == "k":
        fields = json.loads(rest)
        if not isinstance(fields, dict):
            raise ValueError(f"bad key {text!r}")
        return ("k", tuple(sorted((n, go_json(v)) for n, v in fields.items())))
    if kind == "i":
        return ("i", int(rest))
    raise ValueError(f"unknown path element type {text!r}")


def from_fields_v1(fields: Mapping[str, Any]) -> FieldSet:
    """``Set.FromJSON``: ``{}`` and ``"."`` mark members."""
    known = _HANDED_OUT.get(id(fields))
    if known is not None and known[0] is fields:
        return known[1]
    return _from_fields_v1_json(json.dumps(fields))


@functools.lru_cache(maxsize=8192)
def _from_fields_v1_json(text: str) -> FieldSet:
    fields = json.loads(text)
    out: set[Path] = set()

    def read(node: Mapping[str, Any], prefix: Path) -> None:
        for key, sub in node.items():
            if key == ".":
                continue
            if not isinstance(sub, Mapping):
                raise ValueError(f"bad FieldsV1 node at {key!r}")
            pe = parse_pe(key)
            if not sub or "." in sub:
                out.add((*prefix, pe))
            read(sub, (*prefix, pe))

    read(fields, ())
    return frozenset(out)


def recursive_difference(paths: FieldSet, exclude: FieldSet) -> FieldSet:
    """``Set.RecursiveDifference``: drop paths in ``exclude`` and everything below them."""
    if not exclude:
        return paths
    # only the prefixes as long as an excluded path can be in ``exclude``
    lengths = sorted({len(e) for e in exclude})
    if lengths == [1]:
        tops = {e[0] for e in exclude}
        return frozenset(p for p in paths if not p or p[0] not in tops)
    return frozenset(p for p in paths
                     if not any(p[:i] in exclude for i in lengths if 1 <= i <= len(p)))


def with_prefix(paths: FieldSet, pe: PE) -> FieldSet:
    return frozenset(p[1:] for p in paths if len(p) > 1 and p[0] == pe)


# --- types ---------------------------------------------------------------------------


@dataclass(eq=False)
class Type:
    """One node of a schema as SMD sees it."""

    kind: str  # "scalar" | "map" | "list" | "deduced"
    scalar: str = "any"  # numeric | string | boolean | any
    fields: dict[str, Type] = field(default_factory=dict)
    elem: Type | None = None
    atomic: bool = False
    list_type: str = "atomic"  # atomic | set | map
    keys: tuple[str, ...] = ()
    key_defaults: dict[str, Any] = field(default_factory=dict)

    def field_type(self, name: str) -> Type | None:
        """The declared field's type, else the element type (None: not declared)."""
        return self.fields.get(name) or self.elem


DEDUCED = Type("deduced")
_DEDUCED_MAP = Type("map", elem=DEDUCED)
_DEDUCED_LIST = Type("list", atomic=True, elem=DEDUCED)
_ANY = Type("scalar")


def _resolve(t: Type | None, v: Any) -> Type:
    if t is None:
        return DEDUCED
    if t.kind != "deduced":
        return t
    if isinstance(v, dict):
        return _DEDUCED_MAP
    if isinstance(v, list):
        return _DEDUCED_LIST
    return _ANY


def _str_map() -> Type:
    return Type("map", elem=Type("scalar", "string"))


def object_meta() -> Type:
    s = Type("scalar", "string")
    n = Type("scalar", "numeric")
    owner = Type("map", fields={"apiVersion": s, "kind": s, "name": s, "uid": s,
                                "controller": Type("scalar", "boolean"),
                                "blockOwnerDeletion": Type("scalar", "boolean")})
    return Type("map", fields={
        "name": s, "generateName": s, "namespace": s, "selfLink": s, "uid": s,
        "resourceVersion": s, "generation": n, "creationTimestamp": s,
        "deletionTimestamp": s, "deletionGracePeriodSeconds": n,
        "labels": _str_map(), "annotations": _str_map(),
        "ownerReferences": Type("list", elem=owner, list_type="map", keys=("uid",)),
        "finalizers": Type("list", elem=s, list_type="set"),
        "managedFields": Type("list", elem=DEDUCED, atomic=True),
    })


def from_openapi(schema: Mapping[str, Any] | None) -> Type:
    """The SMD type of a structural schema node (kube-openapi's schemaconv rules)."""
    if not schema:
        return DEDUCED
    if schema.get("x-kubernetes-int-or-string"):
        return Type("scalar", "any")
    typ = schema.get("type")
    if typ == "object":
        props = schema.get("properties") or {}
        addl = schema.get("additionalProperties")
        elem: Type | None = None
        if isinstance(addl, Mapping):
            elem = from_openapi(addl)
        elif addl is True or schema.get("x-kubernetes-preserve-unknown-fields"):
            elem = DEDUCED
        return Type("map", fields={k: from_openapi(v) for k, v in props.items()}, elem=elem,
                    atomic=schema.get("x-kubernetes-map-type") == "atomic")
    if typ == "array":
        items = schema.get("items")
        items = items if isinstance(items, Mapping) else None
        list_type = schema.get("x-kubernetes-list-type", "atomic")
        keys = tuple(schema.get("x-kubernetes-list-map-keys") or ())
        props = (items or {}).get("properties") or {}
        return Type("list", elem=from_openapi(items), atomic=list_type == "atomic",
                    list_type=list_type, keys=keys,
                    key_defaults={k: props[k]["default"] for k in keys
                                  if "default" in props.get(k, {})})
    if typ in ("integer", "number"):
        return Type("scalar", "numeric")
    if typ == "string":
        return Type("scalar", "string")
    if typ == "boolean":
        return Type("scalar", "boolean")
    return DEDUCED  # untyped: x-kubernetes-preserve-unknown-fields only


def _root(body: Type) -> Type:
    fields = dict(body.fields)
    fields.update({"apiVersion": Type("scalar", "string"), "kind": Type("scalar", "string"),
                   "metadata": object_meta()})
    return Type("map", fields=fields, elem=body.elem)


def crd_type(schema: Mapping[str, Any] | None) -> Type:
    """A custom resource: its schema, with ``ObjectMeta`` and the type fields."""
    body = from_openapi(schema) if schema else Type("map", elem=DEDUCED)
    if body.kind != "map":
        body = Type("map", elem=DEDUCED)
    return _root(body)


def _keyed(keys: tuple[str, ...], defaults: Mapping[str, Any] | None = None,
           fields: dict[str, Type] | None = None) -> Type:
    return Type("list", elem=Type("map", fields=fields or {}, elem=DEDUCED), list_type="map",
                keys=keys, key_defaults=dict(defaults or {}))


def _pod_spec() -> Type:
    port = {"containerPort", "protocol"}
    container = {
        "ports": _keyed(tuple(sorted(port)), {"protocol": "TCP"}),
        "env": _keyed(("name",)),
        "volumeMounts": _keyed(("mountPath",)),
    }
    return Type("map", fields={
        "containers": _keyed(("name",), fields=container),
        "initContainers": _keyed(("name",), fields=container),
        "volumes": _keyed(("name",)),
    }, elem=DEDUCED)


# Built-in kinds are deduced (maps granular, lists atomic) except these list-map keys,
# taken from their OpenAPI (x-kubernetes-list-type: map / patchMergeKey).
BUILTIN_LIST_KEYS = {
    ("apps", "Deployment"): "spec.template.spec: containers[name], initContainers[name], "
                            "volumes[name]; containers[].ports[containerPort,protocol], "
                            "env[name], volumeMounts[mountPath]",
    ("", "Service"): "spec.ports[port,protocol]",
}


def builtin_type(group: str, kind: str) -> Type:
    fields: dict[str, Type] = {}
    if (group, kind) == ("apps", "Deployment"):
        template = Type("map", fields={"metadata": object_meta(), "spec": _pod_spec()},
                        elem=DEDUCED)
        fields["spec"] = Type("map", fields={"template": template}, elem=DEDUCED)
    elif (group, kind) == ("", "Service"):
        fields["spec"] = Type("map", fields={
            "ports": _keyed(("port", "protocol"), {"protocol": "TCP"})}, elem=DEDUCED)
    return _root(Type("map", fields=fields, elem=DEDUCED))


# --- list items ----------------------------------------------------------------------


class SchemaError(Exception):
    """A value that does not fit its type (an SMD ValidationError)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path, self.message = path, message


def item_pe(t: Type, item: Any) -> PE:
    """``listItemToPathElement`` for associative lists."""
    if t.list_type == "map" and t.keys:
        if item is None:
            raise ValueError("associative list with keys may not have a null element")
        if not isinstance(item, dict):
            raise ValueError("associative list with keys may not have non-map elements")
        defaults = t.key_defaults
        fields = []
        for name in t.keys:
            if name in item:
                fields.append((name, go_json(item[name])))
            elif name in defaults:
                fields.append((name, go_json(defaults[name])))
        if not fields:
            keys = "[" + " ".join(json.dumps(k) for k in t.keys) + "]"
            raise ValueError(f"associative list with keys has an element that omits all key "
                             f"fields {keys} (and doesn't have default values for any key "
                             f"fields)")
        return ("k", tuple(sorted(fields)))
    if isinstance(item, dict):
        raise ValueError("associative list without keys has an element that's a map type")
    if isinstance(item, list):
        raise ValueError("not supported: associative list with lists as elements")
    if item is None:
        raise ValueError("associative list without keys has an element that's an explicit null")
    return ("v", go_json(item))


def _granular_list(t: Type, v: Any) -> bool:
    return t.kind == "list" and not t.atomic and isinstance(v, list)


def _granular_map(t: Type, v: Any) -> bool:
    return t.kind == "map" and not t.atomic and isinstance(v, dict)


# --- validation of an applied configuration ------------------------------------------


def _go_type(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int64"
    if isinstance(v, float):
        return "float64"
    if isinstance(v, str):
        return "string"
    if isinstance(v, dict):
        return "map[string]interface {}"
    if isinstance(v, list):
        return "[]interface {}"
    return "<nil>"


def validate(value: Any, t: Type, prefix: str = "") -> list[SchemaError]:
    """``TypedValue.Validate`` (no duplicates allowed), as ``ObjectToTyped`` runs it."""
    t = _resolve(t, value)
    if value is None:
        return []
    if t.kind == "scalar":
        ok = {"numeric": isinstance(value, int | float) and not isinstance(value, bool),
              "string": isinstance(value, str), "boolean": isinstance(value, bool),
              "any": not isinstance(value, dict | list)}[t.scalar]
        if ok:
            return []
        expected = {"numeric": "numeric (int or float)", "any": "any scalar"}.get(
            t.scalar, t.scalar)
        return [SchemaError(prefix, f"expected {expected}, got {_go_type(value)}")]
    if t.kind == "map":
        if not isinstance(value, dict):
            return [SchemaError(prefix, f"expected map, got {_go_type(value)}")]
        errs: list[SchemaError] = []
        for key, sub in value.items():
            ft = t.field_type(key)
            if ft is None:
                errs.append(SchemaError(f"{prefix}.{key}", "field not declared in schema"))
                break  # the walker stops at the first undeclared field of a map
            errs += validate(sub, ft, f"{prefix}.{key}")
        return errs
    if not isinstance(value, list):
        return [SchemaError(prefix, f"expected list, got {_go_type(value)}")]
    errs = []
    seen: set[PE] = set()
    for i, item in enumerate(value):
        if t.atomic:
            errs += validate(item, t.elem or DEDUCED, f"{prefix}[{i}]")
            continue
        try:
            pe = item_pe(t, item)
        except ValueError as exc:
            errs.append(SchemaError(prefix, f"element {i}: {exc}"))
            return errs
        if pe in seen:
            errs.append(SchemaError(prefix, f"duplicate entries for key {pe_string(pe)}"))
        seen.add(pe)
        errs += validate(item, t.elem or DEDUCED, prefix + pe_string(pe))
    return errs


# --- the typed operations -------------------------------------------------------------


def to_field_set(value: Any, t: Type) -> FieldSet:
    """``TypedValue.ToFieldSet``: leaves, list items, map keys that are not struct fields,
    empty maps and nulls are members; atomic lists and maps are leaves."""
    out: set[Path] = set()

    def walk(v: Any, tt: Type, path: Path) -> None:
        tt = _resolve(tt, v)
        if tt.kind == "list":
            if tt.atomic or not isinstance(v, list):
                if tt.atomic:
                    out.add(path)
                return
            pes = [item_pe(tt, item) for item in v]
            counts: dict[PE, int] = {}
            for pe in pes:
                counts[pe] = counts.get(pe, 0) + 1
            for item, pe in zip(v, pes, strict=True):
                out.add((*path, pe))
                if counts[pe] == 1:
                    walk(item, tt.elem or DEDUCED, (*path, pe))
            return
        if tt.kind == "map":
            if tt.atomic:
                out.add(path)
                return
            if not isinstance(v, dict):
                if v is not None:
                    out.add(path)
                return
            for key, sub in v.items():
                child = (*path, ("f", key))
                ft = tt.fields.get(key)
                walk(sub, ft or tt.elem or DEDUCED, child)
                if sub is None or (isinstance(sub, dict) and not sub) or ft is None:
                    out.add(child)
            return
        if path:
            out.add(path)

    walk(value, t, ())
    return frozenset(out)


@dataclass
class Comparison:
    removed: set[Path] = field(default_factory=set)
    modified: set[Path] = field(default_factory=set)
    added: set[Path] = field(default_factory=set)

    def filtered(self, reset: FieldSet) -> Comparison:
        return Comparison(set(recursive_difference(frozenset(self.removed), reset)),
                          set(recursive_difference(frozenset(self.modified), reset)),
                          set(recursive_difference(frozenset(self.added), reset)))

    @property
    def changed(self) -> FieldSet:
        return frozenset(self.modified | self.added)


def _index(t: Type, items: list[Any]) -> tuple[list[PE], dict[PE, list[Any]]]:
    order: list[PE] = []
    groups: dict[PE, list[Any]] = {}
    for item in items:
        pe = item_pe(t, item)
        if pe not in groups:
            order.append(pe)
            groups[pe] = []
        groups[pe].append(item)
    return order, groups


def _unchanged(a: Any, b: Any) -> bool:
    """A sure ``same(a, b)`` for containers, cheaper than walking them: equal in Python and
    in JSON text (which tells ``true`` from ``1``, the one thing Python's ``==`` confuses
    that ``value.Equals`` does not).  False only means "walk them"."""
    if a is b:
        return isinstance(a, dict | list)
    if not isinstance(a, dict | list) or type(a) is not type(b) or a != b:
        return False
    try:
        return json.dumps(a) == json.dumps(b)
    except (TypeError, ValueError):  # not JSON (a YAML timestamp): walk
        return False


def compare(lhs: Any, rhs: Any, t: Type) -> Comparison:
    """``TypedValue.Compare``: what an update removed, modified and added."""
    res = Comparison()

    def leaf(l_: Any, r: Any, path: Path) -> None:
        if l_ is MISSING:
            res.added.add(path)
        elif r is MISSING:
            res.removed.add(path)
        elif not same(l_, r):
            res.modified.add(path)

    def walk(l_: Any, r: Any, tt: Type, path: Path) -> None:
        if len(path) == 1 and _unchanged(l_, r):
            return  # a top-level part (spec, status) the write left as it was
        lt = _resolve(tt, None if l_ is MISSING else l_)
        rt = _resolve(tt, None if r is MISSING else r)
        if lt is not rt and l_ is not MISSING and r is not MISSING \
                and l_ is not None and r is not None:
            leaf(l_, r, path)  # a deduced value changed shape
            return
        t2 = rt if r is not MISSING and r is not None else lt
        lv = None if l_ is MISSING else l_
        rv = None if r is MISSING else r
        if t2.kind == "map" and not t2.atomic and (isinstance(lv, dict) or isinstance(rv, dict)) \
                and (lv or rv):
            lm = lv if isinstance(lv, dict) else {}
            rm = rv if isinstance(rv, dict) else {}
            for key in {**lm, **rm}:
                walk(lm.get(key, MISSING), rm.get(key, MISSING),
                     t2.field_type(key) or DEDUCED, (*path, ("f", key)))
        elif t2.kind == "list" and not t2.atomic and (isinstance(lv, list) or isinstance(
                rv, list)) and (lv or rv):
            lorder, lgroups = _index(t2, lv if isinstance(lv, list) else [])
            rorder, rgroups = _index(t2, rv if isinstance(rv, list) else [])
            elem = t2.elem or DEDUCED
            for pe in lorder + [p for p in rorder if p not in lgroups]:
                ll, rl = lgroups.get(pe, []), rgroups.get(pe, [])
                child = (*path, pe)
                if len(ll) <= 1 and len(rl) <= 1:
                    walk(ll[0] if ll else MISSING, rl[0] if rl else MISSING, elem, child)
                elif len(ll) >= 2 and len(rl) >= 2:
                    if not same(ll, rl):
                        res.modified.add(child)
                elif len(ll) >= 2:
                    if rl:
                        walk(MISSING, rl[0], elem, child)
                    res.removed.add(child)
                else:
                    if ll:
                        walk(ll[0], MISSING, elem, child)
                    res.added.add(child)
        else:
            leaf(l_, r, path)
            return
        if l_ is MISSING:
            res.added.add(path)
        elif r is MISSING:
            res.removed.add(path)

    walk(lhs, rhs, t, ())
    res.added.discard(())
    res.removed.discard(())
    res.modified.discard(())
    return res


def merge(lhs: Any, rhs: Any, t: Type) -> Any:
    """``TypedValue.Merge`` (apply): the configuration wins; granular maps merge by key,
    associative lists by item, keeping the live order around the applied items."""
    if rhs is MISSING:
        return lhs
    if lhs is MISSING:
        return rhs
    tt = _resolve(t, rhs if rhs is not None else lhs)
    if _granular_map(tt, rhs) and (lhs or rhs):
        lm = lhs if isinstance(lhs, dict) else {}
        out: Obj = {}
        for key in {**lm, **rhs}:
            out[key] = merge(lm.get(key, MISSING), rhs.get(key, MISSING),
                             tt.field_type(key) or DEDUCED)
        return out
    if _granular_list(tt, rhs) and (lhs or rhs):
        return _merge_list(tt, lhs if isinstance(lhs, list) else [], rhs)
    return rhs


def _merge_list(t: Type, lhs: list[Any], rhs: list[Any]) -> list[Any]:
    """``mergingWalker.visitListItems``' ordering: shared items follow the applied order,
    live-only items keep their place, applied-only items come where they were applied."""
    elem = t.elem or DEDUCED
    rpes = [item_pe(t, x) for x in rhs]
    robs = dict(zip(rpes, rhs, strict=True))
    lpes: list[PE] = []
    lobs: dict[PE, Any] = {}
    for item in lhs:
        pe = item_pe(t, item)
        lobs[pe] = None if pe in lobs else item  # a duplicated live item merges as null
        lpes.append(pe)
    shared = [pe for pe in rpes if pe in lobs]
    next_shared = shared.pop(0) if shared else None
    merged_rhs: set[PE] = set()
    out: list[Any] = []
    li = ri = 0
    while li < len(lpes) or ri < len(rpes):
        if li < len(lpes) and ri < len(rpes):
            pe = lpes[li]
            if pe == rpes[ri]:
                merged_rhs.add(pe)
                out.append(merge(lobs[pe], robs[pe], elem))
                li += 1
                ri += 1
                next_shared = shared.pop(0) if shared else None
                continue
            if pe in robs and next_shared is not None and next_shared != pe:
                li += 1
                continue
        if li < len(lpes):
            pe = lpes[li]
            if pe not in robs:
                out.append(merge(lhs[li], MISSING, elem))
                li += 1
                continue
            if pe in merged_rhs:
                li += 1
        if ri < len(rpes):
            pe = rpes[ri]
            merged_rhs.add(pe)
            out.append(merge(lobs.get(pe, MISSING), robs[pe], elem))
            ri += 1
            if next_shared is not None and next_shared == pe:
                next_shared = shared.pop(0) if shared else None
    return out


def remove_items(value: Any, paths: FieldSet, t: Type) -> Any:
    """``TypedValue.RemoveItems``: drop every member of ``paths`` (and what is below it).
    As upstream, a map or list left empty by removals becomes null."""
    tt = _resolve(t, value)
    if _granular_list(tt, value):
        if not value:
            return None
        items = []
        for item in value:
            pe = item_pe(tt, item)
            if (pe,) in paths:
                continue
            sub = with_prefix(paths, pe)
            items.append(remove_items(item, sub, tt.elem or DEDUCED) if sub else item)
        return items or None
    if _granular_map(tt, value):
        if not value:
            return None
        out: Obj = {}
        for key, sub_value in value.items():
            fpe: PE = ("f", key)
            if (fpe,) in paths:
                continue
            sub = with_prefix(paths, fpe)
            out[key] = remove_items(sub_value, sub, tt.field_type(key) or DEDUCED) \
                if sub else sub_value
        return out or None
    if tt.kind in ("list", "map"):
        return None if isinstance(value, list | dict) and not value else value
    return value


def type_at(t: Type, path: Path) -> Type | None:
    for kind, payload in path:
        if t.kind == "deduced":
            return DEDUCED
        if kind == "f" and t.kind == "map":
            nxt = t.field_type(payload)
        elif kind in ("k", "v", "i") and t.kind == "list":
            nxt = t.elem
        else:
            return None
        if nxt is None:
            return None
        t = nxt
    return t


def ensure_named_fields_are_members(paths: FieldSet, t: Type) -> FieldSet:
    """``Set.EnsureNamedFieldsAreMembers``: a struct field with members below it is a
    member itself (so removing it removes the whole subtree)."""
    out = set(paths)
    for path in paths:
        for i in range(1, len(path)):
            prefix = path[:i]
            if prefix in out or prefix[-1][0] != "f":
                continue
            parent = type_at(t, prefix[:-1])
            if parent is not None and parent.kind == "map" and prefix[-1][1] in parent.fields:
                out.add(prefix)
    return frozenset(out)


# --- managers --------------------------------------------------------------------------


@dataclass(frozen=True)
class ManagerId:
    """``BuildManagerIdentifier``: apply entries are not split by apiVersion."""

    manager: str
    operation: str  # Apply | Update
    api_version: str = ""
    subresource: str = ""

    def describe(self) -> str:
        """``printManager`` as conflict messages show it."""
        text = json.dumps(self.manager, ensure_ascii=False)
        if self.subresource:
            text += f" with subresource {json.dumps(self.subresource)}"
        if self.operation == "Update":
            text += f" using {self.api_version}"
        return text


@dataclass
class Entry:
    fields: FieldSet
    api_version: str
    applied: bool
    time: str | None = None


Managed = dict[ManagerId, Entry]

# stripMetaManager: fields nobody owns.
STRIPPED: FieldSet = frozenset(
    [(("f", "apiVersion"),), (("f", "kind"),), (("f", "metadata"),)]
    + [(("f", "metadata"), ("f", f)) for f in (
        "name", "namespace", "creationTimestamp", "selfLink", "uid", "clusterName",
        "generation", "managedFields", "resourceVersion")])
MAX_UPDATE_MANAGERS = 10
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


_CLOCK: list[Any] = [-1, ""]


def _now() -> str:
    """RFC 3339 to the second (formatted once per second: this runs on every write)."""
    second = int(time.time())
    if second != _CLOCK[0]:
        _CLOCK[:] = [second, datetime.datetime.fromtimestamp(second, datetime.UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ")]
    return str(_CLOCK[1])


def decode_managed_fields(entries: Any) -> Managed:
    """``DecodeManagedFields``; ValueError for a malformed entry."""
    if not isinstance(entries, list):
        raise ValueError("managedFields must be a list")
    out: Managed = {}
    for i, e in enumerate(entries):
        if not isinstance(e, Mapping):
            raise ValueError(f"managed fields entry {i} is not an object")
        op = e.get("operation")
        if op not in ("Apply", "Update"):
            raise ValueError("operation must be `Apply` or `Update`")
        if not e.get("apiVersion"):
            raise ValueError("apiVersion must not be empty")
        if e.get("fieldsType") != "FieldsV1":
            raise ValueError(f"missing or invalid fieldsType in managed fields entry {i}")
        mid = ManagerId(str(e.get("manager", "")), op,
                        "" if op == "Apply" else str(e["apiVersion"]),
                        str(e.get("subresource", "")))
        out[mid] = Entry(from_fields_v1(e.get("fieldsV1") or {}), str(e["apiVersion"]),
                         op == "Apply", e.get("time"))
    return out


def encode_managed_fields(managed: Managed) -> list[Obj]:
    """``encodeManagedFields``, sorted by operation, time, manager, apiVersion,
    subresource."""
    out = []
    for mid, entry in managed.items():
        e: Obj = {"manager": mid.manager, "operation": mid.operation,
                  "apiVersion": entry.api_version}
        if entry.time is not None:
            e["time"] = entry.time
        e["fieldsType"] = "FieldsV1"
        e["fieldsV1"] = to_fields_v1(entry.fields)
        if mid.subresource:
            e["subresource"] = mid.subresource
        out.append(e)
    out.sort(key=lambda e: (e["operation"], e.get("time") or "", e["manager"],
                            e["apiVersion"], e.get("subresource", "")))
    return out


def is_reset_request(entries: Any) -> bool:
    """``isResetManagedFields``: ``[]`` or ``[{}]`` in a request clears managedFields."""
    return isinstance(entries, list) and (entries == [] or entries == [{}])


@dataclass
class Conflict:
    manager: ManagerId
    path: Path


class ConflictError(Exception):
    """``NewConflictError``: 409 ``Conflict`` with one cause per conflicting field."""

    def __init__(self, conflicts: list[Conflict]) -> None:
        self.conflicts = sorted(conflicts, key=lambda c: (c.manager.describe(),
                                                           [pe_key(p) for p in c.path]))
        super().__init__(self.message)

    @property
    def message(self) -> str:
        cs = self.conflicts
        if len(cs) == 1:
            return (f"Apply failed with 1 conflict: conflict with {cs[0].manager.describe()}: "
                    f"{path_string(cs[0].path)}")
        lines: list[str] = []
        by_manager: dict[str, list[Path]] = {}
        for c in cs:
            by_manager.setdefault(c.manager.describe(), []).append(c.path)
        for name in sorted(by_manager):
            lines.append(f"conflicts with {name}:")
            lines += [f"- {path_string(p)}" for p in by_manager[name]]
        return f"Apply failed with {len(cs)} conflicts: " + "\n".join(lines)

    @property
    def causes(self) -> list[Obj]:
        return [{"reason": "FieldManagerConflict",
                 "message": f"conflict with {c.manager.describe()}",
                 "field": path_string(c.path)} for c in self.conflicts]


def _copy(managed: Managed) -> Managed:
    return {k: Entry(v.fields, v.api_version, v.applied, v.time) for k, v in managed.items()}


class FieldManager:
    """The API server's field manager for one kind and (sub)resource.

    ``root`` is the kind's type, ``api_version`` its group-version, ``reset`` the fields
    the (sub)resource's strategy resets (never owned, never conflicting)."""

    def __init__(self, root: Type, api_version: str, subresource: str = "",
                 reset: FieldSet = EMPTY, clock: Callable[[], str] = _now) -> None:
        self.root, self.api_version, self.subresource = root, api_version, subresource
        self.reset, self.clock = reset, clock

    def _id(self, manager: str, operation: str) -> ManagerId:
        return ManagerId(manager or "unknown", operation,
                         self.api_version if operation == "Update" else "", self.subresource)

    # --- update: create, PUT and non-apply PATCH ----------------------------------------
    def update(self, live: Obj | None, new: Obj, managed: Managed, manager: str) -> Managed:
        """Ownership after a non-apply write of ``new`` over ``live`` (None: create).
        As ``UpdateNoErrors``: a value the types cannot walk keeps the old ownership."""
        if not managed and live is not None:
            return managed  # skipNonApplied: an existing object nobody tracked stays so
        base = live if live is not None else _empty_like(new)
        try:
            return self._cap(self._update(base, new, managed, self._id(manager, "Update")))
        except ValueError:
            return managed

    def _update(self, live: Obj, new: Obj, managed: Managed, mid: ManagerId) -> Managed:
        """``Updater.Update`` run as "current-operation", then merged into the writer's
        entry (``managedFieldsUpdater``): the time moves only when it changed something."""
        managed = _copy(managed)
        cmp = compare(_body(live), _body(new), self.root).filtered(self.reset)
        for other, entry in list(managed.items()):
            remaining = entry.fields - cmp.changed - cmp.removed
            if remaining:
                entry.fields = remaining
            else:
                del managed[other]
        current = recursive_difference(cmp.changed, self.reset) - STRIPPED
        if current:
            prev = managed.get(mid)
            managed[mid] = Entry(current | (prev.fields if prev else EMPTY), self.api_version,
                                 False, self.clock())
        return managed

    def _cap(self, managed: Managed) -> Managed:
        """``capManagersManager``: at most 10 update managers; the oldest merge into
        ``ancient-changes``."""
        updaters = [m for m, e in managed.items() if not e.applied]
        if len(updaters) <= MAX_UPDATE_MANAGERS:
            return managed
        updaters.sort(key=lambda m: (managed[m].time or "", m.manager))
        first: dict[str, ManagerId] = {}
        length = len(updaters)
        for mid in updaters:
            if length <= MAX_UPDATE_MANAGERS:
                break
            entry = managed[mid]
            bucket = ManagerId("ancient-changes", "Update", entry.api_version, "")
            if entry.api_version in first:
                if bucket not in managed:
                    managed[bucket] = managed.pop(first[entry.api_version])
                b = managed[bucket]
                managed[bucket] = Entry(b.fields | entry.fields, entry.api_version, False,
                                        entry.time)
                del managed[mid]
                length -= 1
            else:
                first[entry.api_version] = mid
        return managed

    # --- apply --------------------------------------------------------------------------
    def apply(self, live: Obj | None, config: Obj, managed: Managed, manager: str,
              force: bool) -> tuple[Obj | None, Managed]:
        """Server-side apply of ``config`` over ``live`` (None: create).  Returns the new
        object (None when the object is unchanged) and the new ownership, or raises
        :class:`ConflictError` (``ValueError`` for values the types cannot walk)."""
        base: Obj = live if live is not None else {}
        if not managed and live is not None:  # skipNonApplied: who set what was there
            managed = self._cap(self._update(_empty_like(live), live, managed,
                                             self._id("before-first-apply", "Update")))
        try:
            new, out = self._apply(base, config, managed, manager, force)
        except ConflictError as exc:
            if manager != "kubectl":
                raise
            allowed = self._allowed_from_last_applied(base)
            if allowed is None:
                raise
            rest = [c for c in exc.conflicts if c.path not in allowed]
            if rest:
                raise ConflictError(rest) from None
            new, out = self._apply(base, config, managed, manager, True)
        if new is not None:
            new = copy.deepcopy(new)
        annotations = ((new or {}).get("metadata") or {}).get("annotations")
        if manager == "kubectl" and new is not None and isinstance(annotations, dict) \
                and annotations.get(LAST_APPLIED):
            # lastAppliedUpdater: keep the client-side annotation in step with what kubectl
            # applies server-side, so switching back to client-side apply stays correct.
            applied = copy.deepcopy(config)
            meta = applied.get("metadata")
            if isinstance(meta, dict) and isinstance(meta.get("annotations"), dict):
                meta["annotations"].pop(LAST_APPLIED, None)
            annotations[LAST_APPLIED] = go_json(applied) + "\n"
        return new, out

    def _apply(self, live: Obj, config: Obj, managed: Managed, manager: str,
               force: bool) -> tuple[Obj | None, Managed]:
        managed = _copy(managed)
        mid = self._id(manager, "Apply")
        live_body = _body(live)
        merged = merge(live_body, config, self.root)
        last = managed.get(mid)
        applied = recursive_difference(to_field_set(config, self.root), self.reset)
        managed[mid] = Entry(applied, self.api_version, True, last.time if last else None)
        if last is not None and last.fields:
            merged = self._prune(merged, managed, last.fields)
        cmp = compare(live_body, merged, self.root).filtered(self.reset)
        conflicts = []
        for other, entry in managed.items():
            if other == mid:
                continue
            conflicts += [Conflict(other, p) for p in entry.fields & cmp.changed]
        if conflicts and not force:
            raise ConflictError(conflicts)
        lost = frozenset(c.path for c in conflicts)
        for other, entry in list(managed.items()):
            if other != mid:
                entry.fields = entry.fields - lost - cmp.removed
            if not entry.fields:
                del managed[other]
        if mid in managed:
            managed[mid].fields -= STRIPPED
            if not managed[mid].fields:
                del managed[mid]
        if same(live_body, merged):
            return None, managed
        if mid in managed:
            managed[mid].time = self.clock()
        return merged, managed

    def _prune(self, merged: Obj, managed: Managed, last: FieldSet) -> Obj:
        """``Updater.prune``: remove what this applier applied last time and not now, unless
        another manager (or this configuration) still owns it."""
        t = self.root

        def ensure(s: FieldSet) -> FieldSet:
            return ensure_named_fields_are_members(s, t)

        last_e = ensure(last)
        pruned = remove_items(merged, last_e, t) or {}
        owned = frozenset().union(*(e.fields for e in managed.values()))
        merged_set = ensure(to_field_set(merged, t))
        pruned_set = ensure(to_field_set(pruned, t))
        pruned = remove_items(merged, merged_set - (pruned_set | ensure(owned)), t) or {}
        pruned_set = ensure(to_field_set(pruned, t))
        out = remove_items(merged, (merged_set - pruned_set) & last_e, t)
        return out if isinstance(out, dict) else {}

    def _allowed_from_last_applied(self, live: Obj) -> FieldSet | None:
        """``lastAppliedManager``: conflicts on fields whose live value is still what the
        client-side ``kubectl apply`` last applied are allowed (the hand-over)."""
        text = ((live.get("metadata") or {}).get("annotations") or {}).get(LAST_APPLIED)
        if not text:
            return None
        try:
            last = json.loads(text)
        except ValueError:
            return None
        if not isinstance(last, dict) or last.get("apiVersion") != self.api_version:
            return None
        if validate(last, self.root):
            return None
        fields = to_field_set(last, self.root)
        cmp = compare(last, _body(live), self.root)
        return fields - cmp.modified - cmp.added - cmp.removed


def _empty_like(obj: Obj) -> Obj:
    """``ObjectCreater.New(gvk)``: an empty object of the kind."""
    return {k: obj[k] for k in ("apiVersion", "kind") if k in obj}


def _body(obj: Obj) -> Obj:
    """The object as the field manager sees it (managedFields never take part)."""
    meta = obj.get("metadata")
    if isinstance(meta, dict) and "managedFields" in meta:
        obj = {**obj, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}
    return obj
