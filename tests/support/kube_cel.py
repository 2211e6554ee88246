"""CEL for ``x-kubernetes-validations``, compiled and type-checked as the API server does.

The real server (``apiextensions-apiserver/pkg/apiserver/schema/cel/compilation.go``)
turns each schema node into a CEL *declared type* (``apiserver/pkg/cel/common/schemas.go``
``SchemaDeclType``), declares ``self`` (and ``oldSelf``) with it, and compiles every rule
with type checking: a rule that names a field the schema does not declare, or a field
without a ``type`` (``x-kubernetes-preserve-unknown-fields`` alone is *not* visible to
CEL), fails with ``compilation failed: ERROR: <input>:L:C: undefined field 'x'``; a rule
that does not evaluate to ``bool`` fails with ``cel expression must evaluate to a bool``.

Here the declared types become protobuf messages in a private descriptor pool, and the
rules are compiled by ``cel-expr-python`` (Google's C++ CEL implementation with its type
checker), so the checks are the real checker's, not a hand-written imitation.  The typed
compilation is the admission check; evaluation uses a second compilation of the same rule
with ``self`` declared ``dyn`` over the stored JSON (unknown-key access is then a runtime
``no such key`` error, as on the server, which evaluates over unstructured data).  Each
rule is compiled once per CRD version (cached), never per write.

The static cost estimate (``StaticEstimatedCostLimit`` 10,000,000 per rule and 100,000,000
per CRD, ``validation.go``) is approximated: comprehensions multiply by the maximum size of
what they iterate (``maxItems``/``maxProperties``, or the upstream estimate from the 3 MiB
request limit and the element's minimum serialized size), string functions cost a tenth
of the string's maximum length (``maxLength`` x 4 bytes, or the request limit), and a rule
below lists and maps is multiplied by their cardinality.  The runtime per-call cost limit
is not enforced (cel-expr-python does not expose cost tracking).
"""

from __future__ import annotations

import functools
import itertools
import math
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cel_expr_python import cel
from google.protobuf import descriptor_pb2, descriptor_pool, duration_pb2, struct_pb2, timestamp_pb2

MAX_REQUEST_SIZE_BYTES = 3 * 1024 * 1024  # apiserver/pkg/apis/cel/config.go
PER_RULE_COST_LIMIT = 10_000_000  # StaticEstimatedCostLimit
PER_CRD_COST_LIMIT = 100_000_000  # StaticEstimatedCRDCostLimit
MIN_STRING_SIZE = 2
MIN_BOOL_SIZE = 4
MIN_NUMBER_SIZE = 1

# CEL keywords that Kubernetes escapes as __keyword__ (apiserver/pkg/cel/escaping.go).
_RESERVED = {"true", "false", "null", "in", "as", "break", "const", "continue", "else", "for",
             "function", "if", "import", "let", "loop", "package", "namespace", "return",
             "var", "void", "while"}
_IDENT = re.compile(r"^[_a-zA-Z][_a-zA-Z0-9]*$")
_ESCAPABLE = re.compile(r"^[_a-zA-Z][-_.a-zA-Z0-9/]*$")


def escape(name: str) -> str | None:
    """A property name as CEL sees it, or None when it cannot be accessed from CEL."""
    if name in _RESERVED:
        return f"__{name}__"
    if _IDENT.match(name):
        return name.replace("__", "__underscores__")
    if not _ESCAPABLE.match(name):
        return None
    out = name.replace("__", "__underscores__")
    return out.replace(".", "__dot__").replace("-", "__dash__").replace("/", "__slash__")


@dataclass
class DeclType:
    """``apiserver/pkg/cel.DeclType``: what CEL sees of one schema node."""

    kind: str  # object | list | map | string | int | double | bool | bytes | timestamp | ...
    fields: dict[str, DeclType] = field(default_factory=dict)  # escaped name -> type
    elem: DeclType | None = None
    max_elements: int = 0  # list/map items, string bytes
    min_size: int = 1

    def describe(self) -> str:
        if self.kind == "list":
            return f"list({self.elem.describe() if self.elem else 'dyn'})"
        if self.kind == "map":
            return f"map(string, {self.elem.describe() if self.elem else 'dyn'})"
        return self.kind


def _request_string_len(schema: Mapping[str, Any]) -> int:
    fmt = schema.get("format")
    return {"duration": 32, "date": 12, "date-time": 32}.get(str(fmt), MAX_REQUEST_SIZE_BYTES - 2)


def decl_type(schema: Mapping[str, Any] | None, root: bool = False) -> DeclType | None:
    """``SchemaDeclType``: None for nodes CEL cannot see (untyped, or typed by nothing)."""
    if not isinstance(schema, Mapping):
        return None
    if schema.get("x-kubernetes-int-or-string"):
        max_len = schema.get("maxLength")
        return DeclType("dyn", max_elements=int(max_len) * 4 if max_len is not None
                        else MAX_REQUEST_SIZE_BYTES - 2)
    if root or schema.get("x-kubernetes-embedded-resource"):
        props = dict(schema.get("properties") or {})
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        meta = dict(props.get("metadata") or {"type": "object"})
        meta["type"] = "object"
        meta["properties"] = {"name": {"type": "string"}, "generateName": {"type": "string"}}
        props["metadata"] = meta
        schema = {**schema, "properties": props}
    typ = schema.get("type")
    if typ == "array":
        items = schema.get("items")
        elem = decl_type(items, bool(isinstance(items, Mapping)
                                     and items.get("x-kubernetes-embedded-resource")))
        if elem is None:
            return None
        n = schema.get("maxItems")
        max_items = max(0, int(n)) if n is not None else (MAX_REQUEST_SIZE_BYTES - 2) // (
            elem.min_size + 1)
        return DeclType("list", elem=elem, max_elements=max_items, min_size=2)
    if typ == "object":
        addl = schema.get("additionalProperties")
        if isinstance(addl, Mapping):
            elem = decl_type(addl)
            if elem is None:
                return None
            n = schema.get("maxProperties")
            max_props = max(0, int(n)) if n is not None else (MAX_REQUEST_SIZE_BYTES - 2) // (
                elem.min_size + 6)
            return DeclType("map", elem=elem, max_elements=max_props, min_size=2)
        fields: dict[str, DeclType] = {}
        required = set(schema.get("required") or [])
        min_size = 2
        for name, prop in (schema.get("properties") or {}).items():
            ft = decl_type(prop, bool(isinstance(prop, Mapping)
                                      and prop.get("x-kubernetes-embedded-resource")))
            if ft is None:
                continue
            escaped = escape(name)
            if escaped is not None:
                fields[escaped] = ft
            if name in required and "default" not in prop:
                min_size += len(name) + ft.min_size + 4
        return DeclType("object", fields=fields, min_size=min_size)
    if typ == "string":
        fmt = schema.get("format")
        kind = {"byte": "bytes", "duration": "duration", "date": "timestamp",
                "date-time": "timestamp"}.get(str(fmt), "string")
        if schema.get("maxLength") is not None and kind in ("string", "bytes"):
            factor = 4 if kind == "string" else 1
            max_len = max(0, int(schema["maxLength"])) * factor
        elif kind == "string" and schema.get("enum"):
            max_len = max((len(v) for v in schema["enum"] if isinstance(v, str)), default=0)
        else:
            max_len = _request_string_len(schema)
        return DeclType(kind, max_elements=max_len, min_size=MIN_STRING_SIZE)
    if typ == "boolean":
        return DeclType("bool", min_size=MIN_BOOL_SIZE)
    if typ == "number":
        return DeclType("double", min_size=MIN_NUMBER_SIZE)
    if typ == "integer":
        return DeclType("int", min_size=MIN_NUMBER_SIZE)
    return None


# --- declared types as protobuf messages --------------------------------------------------

_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {"string": _F.TYPE_STRING, "int": _F.TYPE_INT64, "double": _F.TYPE_DOUBLE,
            "bool": _F.TYPE_BOOL, "bytes": _F.TYPE_BYTES}
_WELL_KNOWN = {"timestamp": ".google.protobuf.Timestamp", "duration": ".google.protobuf.Duration",
               "dyn": ".google.protobuf.Value"}
_counter = itertools.count()
_lock = threading.Lock()


class _TypeBuilder:
    """Builds one ``.proto`` file of messages for a tree of declared types."""

    def __init__(self) -> None:
        self.package = f"k8s.crd{next(_counter)}"
        self.file = descriptor_pb2.FileDescriptorProto(
            name=f"{self.package.replace('.', '/')}.proto", package=self.package, syntax="proto2",
            dependency=["google/protobuf/struct.proto", "google/protobuf/timestamp.proto",
                        "google/protobuf/duration.proto"])
        self._n = 0

    def message(self, t: DeclType) -> str:
        """A message for an object type; returns its fully qualified name (no dot)."""
        self._n += 1
        name = f"Object{self._n}"
        msg = self.file.message_type.add(name=name)
        for number, (fname, ft) in enumerate(sorted(t.fields.items()), start=1):
            self._field(msg, fname, number, ft)
        return f"{self.package}.{name}"

    def _field(self, msg: Any, fname: str, number: int, ft: DeclType) -> None:
        label = _F.LABEL_OPTIONAL
        if ft.kind == "list":
            label = _F.LABEL_REPEATED
            inner = ft.elem
            assert inner is not None
            if inner.kind in ("list", "map"):  # no repeated-of-repeated in protobuf
                msg.field.add(name=fname, number=number, label=_F.LABEL_OPTIONAL,
                              type=_F.TYPE_MESSAGE, type_name=".google.protobuf.ListValue",
                              json_name=fname)
                return
            ft = inner
        if ft.kind == "map":
            entry_name = _camel(fname) + "Entry"  # what protoc names a map<>'s entry
            entry = msg.nested_type.add(name=entry_name)
            entry.options.map_entry = True
            entry.field.add(name="key", number=1, label=_F.LABEL_OPTIONAL, type=_F.TYPE_STRING)
            inner = ft.elem
            assert inner is not None
            if inner.kind in ("list", "map"):
                entry.field.add(name="value", number=2, label=_F.LABEL_OPTIONAL,
                                type=_F.TYPE_MESSAGE, type_name=".google.protobuf.Value")
            else:
                self._scalar_or_message(entry, "value", 2, inner, _F.LABEL_OPTIONAL)
            msg.field.add(name=fname, number=number, label=_F.LABEL_REPEATED,
                          type=_F.TYPE_MESSAGE, json_name=fname,
                          type_name=f".{self.package}.{msg.name}.{entry_name}")
            return
        self._scalar_or_message(msg, fname, number, ft, label)

    def _scalar_or_message(self, msg: Any, fname: str, number: int, ft: DeclType,
                           label: int) -> None:
        if ft.kind in _SCALARS:
            msg.field.add(name=fname, number=number, label=label, type=_SCALARS[ft.kind],
                          json_name=fname)
        elif ft.kind in _WELL_KNOWN:
            msg.field.add(name=fname, number=number, label=label, type=_F.TYPE_MESSAGE,
                          type_name=_WELL_KNOWN[ft.kind], json_name=fname)
        else:  # object
            msg.field.add(name=fname, number=number, label=label, type=_F.TYPE_MESSAGE,
                          type_name="." + self.message(ft), json_name=fname)

    def cel_type(self, t: DeclType) -> Any:
        if t.kind == "object":
            return cel.Type(self.message(t))
        if t.kind == "list":
            return cel.Type.List(self.cel_type(t.elem) if t.elem else cel.Type.DYN)
        if t.kind == "map":
            return cel.Type.Map(cel.Type.STRING, self.cel_type(t.elem) if t.elem else cel.Type.DYN)
        return {"string": cel.Type.STRING, "int": cel.Type.INT, "double": cel.Type.DOUBLE,
                "bool": cel.Type.BOOL, "bytes": cel.Type.BYTES, "timestamp": cel.Type.TIMESTAMP,
                "duration": cel.Type.DURATION}.get(t.kind, cel.Type.DYN)


def _camel(name: str) -> str:
    """protobuf's ToCamelCase: drop underscores, upper-case the letter after one."""
    out, upper = "", True
    for ch in name:
        if ch == "_":
            upper = True
            continue
        out += ch.upper() if upper else ch
        upper = False
    return out


def _new_pool() -> Any:
    pool = descriptor_pool.DescriptorPool()
    for module in (struct_pb2, timestamp_pb2, duration_pb2):
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        pool.Add(proto)
    return pool


@functools.cache
def _dyn_env() -> Any:
    return cel.NewEnv(variables={"self": cel.Type.DYN, "oldSelf": cel.Type.DYN})


class CelError(Exception):
    """A rule the API server would refuse when the CRD is written."""


def _normalise_issue(text: str) -> str:
    """cel-cpp's checker text -> cel-go's (the Kubernetes message shape)."""
    text = re.sub(r"^INVALID_ARGUMENT: ", "", text.strip())
    text = re.sub(r" \[INVALID_ARGUMENT\]$", "", text)
    text = re.sub(r"undefined field '([^']*)' not found in struct '[^']*'",
                  r"undefined field '\1'", text)
    return text


@dataclass
class CompiledRule:
    rule: str
    program: Any  # the dyn-typed expression evaluated on writes
    transition: bool
    cost: int


def compile_rule(node_type: DeclType | None, rule: str) -> CompiledRule:
    """Type-check ``rule`` with ``self`` of ``node_type``; raise CelError as the server would."""
    with _lock:
        builder = _TypeBuilder()
        self_type = builder.cel_type(node_type) if node_type is not None else cel.Type.DYN
        pool = _new_pool()
        pool.Add(builder.file)
        env = cel.NewEnv(pool, variables={"self": self_type, "oldSelf": self_type})
        try:
            typed = env.compile(rule)
        except Exception as exc:  # cel-expr-python raises RuntimeError with the issues
            raise CelError("compilation failed: " + _normalise_issue(str(exc))) from None
        if typed.return_type() != cel.Type.BOOL:
            raise CelError("cel expression must evaluate to a bool")
        program = _dyn_env().compile(rule)
    transition = bool(re.search(r"\boldSelf\b", rule))
    return CompiledRule(rule, program, transition, estimate_cost(rule, node_type))


def evaluate(compiled: CompiledRule, value: Any, old: Any = None) -> bool:
    """Run a compiled rule; a runtime error (e.g. no such key) counts as a failure."""
    data = {"self": value}
    if compiled.transition:
        data["oldSelf"] = old
    result = compiled.program.eval(data=data)
    out = result.value()
    if isinstance(out, bool):
        return out
    raise CelError(str(out))


# --- static cost estimate (approximation of cel-go's checker/cost.go) -------------------

_MACROS = {"all", "exists", "exists_one", "map", "filter"}
_STRING_FUNCS = {"contains", "startsWith", "endsWith", "matches", "find", "findAll", "indexOf",
                 "lastIndexOf", "split", "replace", "lowerAscii", "upperAscii", "trim",
                 "substring", "join", "charAt", "reverse"}


@functools.cache
def _parser() -> Any:
    from celpy import celparser

    return celparser.CELParser()


def estimate_cost(rule: str, self_type: DeclType | None) -> int:
    try:
        tree = _parser().parse(rule)
    except Exception:
        return 1
    cost, _t = _est(tree, {"self": self_type, "oldSelf": self_type})
    return math.ceil(cost)


def _size(t: DeclType | None) -> int:
    return t.max_elements if t is not None else 1


def _est(node: Any, scope: dict[str, DeclType | None]) -> tuple[float, DeclType | None]:
    from lark import Token, Tree

    if isinstance(node, Token):
        return 0.0, None
    assert isinstance(node, Tree)
    kids = [k for k in node.children if not (isinstance(k, Token) and k.type == "ANON")]
    data = str(node.data)
    if data == "ident":
        return 1.0, scope.get(str(kids[0]))
    if data == "literal":
        text = str(kids[0])
        if text[:1] in "'\"" or text[:2].lower() in ("r'", 'r"'):
            return 0.0, DeclType("string", max_elements=len(text))
        return 0.0, None
    if data == "member_dot":
        cost, t = _est(kids[0], scope)
        name = str(kids[1])
        if t is not None and t.kind == "object":
            return cost + 1, t.fields.get(name)
        if t is not None and t.kind == "map":
            return cost + 1, t.elem
        return cost + 1, None
    if data == "member_index":
        c1, t = _est(kids[0], scope)
        c2, _ = _est(kids[1], scope)
        return c1 + c2 + 1, (t.elem if t is not None and t.kind in ("list", "map") else None)
    if data == "member_dot_arg":
        target, method = kids[0], str(kids[1])
        args = list(kids[2].children) if len(kids) > 2 and isinstance(kids[2], Tree) else []
        ct, t = _est(target, scope)
        if method in _MACROS and len(args) == 2:
            var = _ident_name(args[0])
            elem = t.elem if t is not None and t.kind == "list" else (
                DeclType("string", max_elements=MAX_REQUEST_SIZE_BYTES)
                if t is not None and t.kind == "map" else None)
            n = _size(t) if t is not None and t.kind in ("list", "map") else 1
            cb, _bt = _est(args[1], {**scope, var: elem})
            out_t = (DeclType("list", elem=None, max_elements=n) if method in ("map", "filter")
                     else DeclType("bool"))
            return ct + n * (cb + 1), out_t
        cargs = sum(_est(a, scope)[0] for a in args)
        if method in _STRING_FUNCS and t is not None and t.kind in ("string", "bytes", "list"):
            factor = 1.0
            if method in ("matches", "find", "findAll") and args:
                factor = max(1.0, 0.25 * len(str(args[0])))  # regex size
            out: DeclType | None = None
            if method in ("split", "findAll"):
                out = DeclType("list", elem=DeclType("string", max_elements=_size(t)),
                               max_elements=_size(t))
            elif method in ("lowerAscii", "upperAscii", "trim", "replace", "substring",
                            "reverse", "join"):
                out = DeclType("string", max_elements=_size(t))
            return ct + cargs + 1 + math.ceil(0.1 * _size(t) * factor), out
        return ct + cargs + 1, None
    if data == "ident_arg":
        name = str(kids[0])
        args = list(kids[1].children) if len(kids) > 1 and isinstance(kids[1], Tree) else []
        cost = sum(_est(a, scope)[0] for a in args)
        if name == "matches" and len(args) == 2:
            _c, t = _est(args[0], scope)
            return cost + 1 + math.ceil(0.1 * _size(t)), DeclType("bool")
        return cost + 1, None
    if data.startswith("relation_") or data.startswith("addition_"):
        costs = [_est(k, scope) for k in kids]
        cost = sum(c for c, _ in costs) + 1
        sized = [t for _, t in costs if t is not None and t.kind in ("string", "bytes", "list")]
        if data in ("relation_eq", "relation_ne", "relation_in", "addition_add") and sized:
            cost += math.ceil(0.1 * max(_size(t) for t in sized))
        return cost, None
    total = 0.0
    last: DeclType | None = None
    for k in kids:
        c, last = _est(k, scope)
        total += c
    if len(kids) == 1:
        return total, last
    return total + 1, None


def _ident_name(node: Any) -> str:
    from lark import Token, Tree

    while isinstance(node, Tree):
        if str(node.data) == "ident":
            return str(node.children[0])
        node = node.children[0] if node.children else None
    return str(node) if isinstance(node, Token) else ""


def cost_error_message(cost_name: str, cost: int, limit: int) -> str:
    """``getCostErrorMessage`` in apiextensions validation.go."""
    factor = cost / limit
    if factor > 100.0:
        shown = "more than 100x"
    elif factor < 1.5:
        shown = f"{factor:f}x"
    else:
        shown = f"{factor:.1f}x"
    return (f"{cost_name} exceeds budget by factor of {shown} (try simplifying the rule, or "
            "adding maxItems, maxProperties, and maxLength where arrays, maps, and strings "
            "are declared)")
