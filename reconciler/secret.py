"""The one type that may hold a secret value in memory.

Guarantee 4 (docs/architecture.md): a resolved password, client secret, refresh token or access
token lives only inside :class:`Secret`.  Its ``repr``/``str``/``format``, pickling,
JSON (pydantic and ``json.dumps(default=...)``) and YAML forms all show :data:`MASK`.
The plain value is reachable only through :meth:`Secret.reveal`, which makes every
place that handles the clear text easy to grep for.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import sys
from typing import Any, NoReturn

MASK = "******"


class Secret:
    """A redacting wrapper around a secret string."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if isinstance(value, Secret):  # pragma: no cover - defensive
            value = value.reveal()
        object.__setattr__(self, "_value", value)

    def reveal(self) -> str:
        """Return the clear text.  Call only where the value is sent to its consumer."""
        value: str = object.__getattribute__(self, "_value")
        return value

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    def __str__(self) -> str:
        return MASK

    def __format__(self, spec: str) -> str:
        return MASK

    def __bool__(self) -> bool:
        return bool(self.reveal())

    def __len__(self) -> int:
        return len(self.reveal())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Secret):
            return hmac.compare_digest(self.reveal().encode(), other.reveal().encode())
        return NotImplemented

    def __hash__(self) -> int:
        return hash(("Secret", self.reveal()))

    def __setattr__(self, name: str, value: Any) -> NoReturn:
        raise AttributeError("Secret is immutable")

    def __reduce__(self) -> NoReturn:
        raise TypeError("Secret values cannot be pickled")

    def __getstate__(self) -> NoReturn:
        raise TypeError("Secret values cannot be serialised")

    # pydantic v2 integration: serialises as the mask, validates from str or Secret.
    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        from pydantic_core import core_schema

        def _validate(value: Any) -> Secret:
            if isinstance(value, Secret):
                return value
            if isinstance(value, str):
                return Secret(value)
            # ValueError (not TypeError): pydantic turns it into a ValidationError.
            raise ValueError("expected a string")

        return core_schema.no_info_plain_validator_function(
            _validate,
            serialization=core_schema.plain_serializer_function_ser_schema(lambda _v: MASK),
        )


_version_key: bytes = os.urandom(32)


def set_version_key(key: bytes) -> None:
    """Install the key used for secret version hashes.

    Versions must be stable across runs (or every apply would look like a rotation), so
    the local store keeps a random key in a 0600 file of the state directory and the
    operator reads one from ``SMTPCTL_VERSION_KEY``.  Without either, a random
    per-process key is used.
    """
    global _version_key
    _version_key = key


def _process_key() -> bytes:
    env = os.environ.get("SMTPCTL_VERSION_KEY")
    return env.encode() if env else _version_key


def keyed_version(value: str | Secret, *, key: bytes | None = None) -> str:
    """A short keyed hash of a secret, safe to store: it changes when the value changes."""
    raw = value.reveal() if isinstance(value, Secret) else value
    digest = hmac.new(key or _process_key(), raw.encode(), hashlib.sha256).hexdigest()
    return "h:" + digest[:24]


def _register_yaml(yaml: Any) -> None:
    """YAML dumps of a Secret show the mask, with every PyYAML dumper."""

    def represent(dumper: Any, _value: Secret) -> Any:
        return dumper.represent_str(MASK)

    for dumper in (yaml.SafeDumper, yaml.Dumper):
        yaml.add_representer(Secret, represent, Dumper=dumper)
    for name in ("CSafeDumper", "CDumper"):
        cdumper = getattr(yaml, name, None)
        if cdumper is not None:
            yaml.add_representer(Secret, represent, Dumper=cdumper)


class _AfterYamlImport:
    """A ``sys.meta_path`` entry that registers the representers right after PyYAML is
    imported, by whoever imports it: importing PyYAML here (~20 ms) was most of what
    the operator - which never writes YAML - paid for this module at start (issue 15).

    It only answers for ``yaml``: it asks the finders after it for the spec, wraps the
    loader's ``exec_module`` so the representers are added before the import returns,
    and takes itself out of ``sys.meta_path`` once PyYAML is loaded."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "yaml":
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        loader: Any = spec.loader
        exec_module = getattr(loader, "exec_module", None)
        if exec_module is None or isinstance(loader, type):  # pragma: no cover
            return None  # not a source or extension module's loader: left alone

        def exec_and_register(module: Any) -> None:
            exec_module(module)
            _register_yaml(module)
            with contextlib.suppress(ValueError):
                sys.meta_path.remove(self)

        loader.exec_module = exec_and_register
        return spec


if "yaml" in sys.modules:
    _register_yaml(sys.modules["yaml"])
else:
    sys.meta_path.insert(0, _AfterYamlImport())
