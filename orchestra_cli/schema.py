"""Typed records without pydantic: the settings and the core data model.

Importing pydantic costs every command ~75 ms (half of a `task list`), so the
models every command loads — settings, tasks, events, agents, envelopes — are
declared here instead: annotated fields, range checks, JSON in and out, and the
few ``model_*`` methods the code calls (the names are pydantic's, so a reader
knows them). pydantic stays where its schemas earn their import: the HTTP API,
agent role files and structured model output.

Input is checked like pydantic's lax mode, with its wording: ``"5"`` is an int,
``5.5`` is not, ``inf`` is never a number, an unknown key is refused (``extra``
"forbid") or dropped ("ignore"). The first bad value raises ``SchemaError``.
"""

from __future__ import annotations

import contextlib
import enum
import json
import math
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, dataclass_transform

MISSING: Any = object()
Loc = tuple[str | int, ...]
Converter = Callable[[Any, Loc], Any]
M = TypeVar("M", bound="Model")


class SchemaError(ValueError):
    """A value that does not fit its field: where (``loc``), what, and pydantic's type code."""

    def __init__(self, loc: Loc, msg: str, kind: str = "value_error") -> None:
        super().__init__(f"{'.'.join(map(str, loc)) or 'input'}: {msg}")
        self.loc = loc
        self.msg = msg
        self.kind = kind

    def errors(self) -> list[dict[str, Any]]:
        return [{"loc": self.loc, "msg": self.msg, "type": self.kind}]


class FieldInfo:
    """A field's default and checks (what ``Field(...)`` returns)."""

    __slots__ = (
        "after",
        "before",
        "default",
        "default_factory",
        "description",
        "limits",
        "pattern",
    )

    def __init__(
        self,
        default: Any = MISSING,
        *,
        default_factory: Callable[[], Any] | None = None,
        ge: float | None = None,
        gt: float | None = None,
        le: float | None = None,
        min_length: int | None = None,
        pattern: str | None = None,
        description: str | None = None,
        before: Callable[[Any], Any] | None = None,
        after: Callable[[Any], Any] | None = None,
    ) -> None:
        self.default = default
        self.default_factory = default_factory
        self.limits = (ge, gt, le, min_length)
        self.pattern = pattern
        self.description = description
        self.before = before
        self.after = after

    @property
    def required(self) -> bool:
        return self.default is MISSING and self.default_factory is None

    def make_default(self) -> Any:
        if self.default_factory is not None:
            return self.default_factory()
        if isinstance(self.default, Model):  # each instance gets its own section
            return self.default.model_copy(deep=True)
        return self.default


def Field(default: Any = MISSING, **options: Any) -> Any:
    """A field with a default (or ``default_factory``), range checks (``ge``, ``gt``,
    ``le``, ``min_length``, ``pattern``) and hooks run ``before`` / ``after`` the type
    check: ``FieldInfo``'s options, typed ``Any`` so that ``x: int = Field(...)`` checks."""
    return FieldInfo(default, **options)


@dataclass_transform(kw_only_default=True, field_specifiers=(Field,))
class Model:
    """Base of a record: subclasses annotate fields; ``extra`` says what an unknown
    key does ("forbid" or "ignore"); ``validate_assignment`` checks ``x.f = v``."""

    model_fields: ClassVar[dict[str, FieldInfo]] = {}
    _converters: ClassVar[dict[str, Converter]] = {}
    # per field: (name, types taken as they are, converter, info) — the hot path
    _plan: ClassVar[tuple[tuple[str, frozenset[type], Converter, FieldInfo], ...]] = ()
    _extra: ClassVar[str] = "forbid"
    _validate_assignment: ClassVar[bool] = False

    def __init_subclass__(
        cls, *, extra: str | None = None, validate_assignment: bool | None = None, **kw: Any
    ) -> None:
        super().__init_subclass__(**kw)
        if extra is not None:
            cls._extra = extra
        if validate_assignment is not None:
            cls._validate_assignment = validate_assignment
        hints = typing.get_type_hints(cls)
        inherited = cls.model_fields  # the parent's (its defaults left the class dict)
        fields: dict[str, FieldInfo] = {}
        converters: dict[str, Converter] = {}
        for name, hint in hints.items():
            if name.startswith("_") or typing.get_origin(hint) is ClassVar:
                continue
            value = cls.__dict__.get(name, MISSING)
            if value is MISSING and name in inherited:
                info = inherited[name]
            else:
                info = value if isinstance(value, FieldInfo) else FieldInfo(value)
            if name in cls.__dict__:
                delattr(cls, name)  # instances hold the value; no class attribute shadows it
            fields[name] = info
            converters[name] = _field_converter(hint, info)
        cls.model_fields = fields
        cls._converters = converters
        cls._plan = tuple(
            (name, _as_is(hints[name], spec), converters[name], spec)
            for name, spec in fields.items()
        )

    def __init__(self, **data: Any) -> None:
        self.__dict__.update(self._validated(data, ()))
        self._post_init(())

    # -- checks ---------------------------------------------------------------
    @classmethod
    def _validated(cls, data: Mapping[str, Any], loc: Loc) -> dict[str, Any]:
        if cls._extra == "forbid":
            for key in data:
                if key not in cls.model_fields:
                    raise SchemaError(
                        (*loc, key), "Extra inputs are not permitted", "extra_forbidden"
                    )
        values: dict[str, Any] = {}
        for name, as_is, convert, info in cls._plan:
            if name in data:
                value = data[name]
                values[name] = value if type(value) in as_is else convert(value, (*loc, name))
            elif info.required:
                raise SchemaError((*loc, name), "Field required", "missing")
            else:
                values[name] = info.make_default()
        return values

    def model_post_init(self, context: Any, /) -> None:
        """Checks and derived values once every field is set (a ValueError is an error
        about the whole record)."""

    @classmethod
    def _build(cls: type[M], data: Any, loc: Loc) -> M:
        if isinstance(data, cls):
            return data
        if not isinstance(data, Mapping):
            raise SchemaError(
                loc,
                "Input should be a valid dictionary or instance of " + cls.__name__,
                "model_type",
            )
        self = cls.__new__(cls)
        self.__dict__.update(cls._validated(data, loc))
        self._post_init(loc)
        return self

    def _post_init(self, loc: Loc) -> None:
        try:
            self.model_post_init(None)
        except SchemaError:
            raise
        except ValueError as exc:
            raise SchemaError(loc, str(exc)) from None

    @classmethod
    def model_validate(cls: type[M], data: Any) -> M:
        return cls._build(data, ())

    @classmethod
    def model_validate_json(cls: type[M], text: str | bytes) -> M:
        try:
            data = _DECODER.decode(text if isinstance(text, str) else text.decode())
        except (ValueError, RecursionError) as exc:
            reason = "nested too deeply" if isinstance(exc, RecursionError) else exc
            raise SchemaError((), f"Invalid JSON: {reason}", "json_invalid") from None
        return cls._build(data, ())

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in self.model_fields:
            raise AttributeError(f"{type(self).__name__} has no field {name!r}")
        if not self._validate_assignment:
            self.__dict__[name] = value
            return
        before = self.__dict__[name]
        self.__dict__[name] = self._converters[name](value, (name,))
        try:
            self._post_init(())  # the record's own check sees the new value
        except SchemaError:
            self.__dict__[name] = before
            raise

    # -- output ---------------------------------------------------------------
    def model_dump(self, *, mode: Literal["python", "json"] = "python") -> dict[str, Any]:
        to_json = mode == "json"
        values = self.__dict__  # (read in place: this runs for every task a store writes)
        return {
            name: value if type(value := values[name]) in _PLAIN else _dump(value, to_json)
            for name in self.model_fields
        }

    def model_dump_json(self) -> str:
        return _JSON.encode(self._values())

    def _values(self) -> dict[str, Any]:
        """The fields' values as they are, in declaration order."""
        values = self.__dict__
        return {name: values[name] for name in self.model_fields}

    def model_copy(self: M, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> M:
        """A copy with ``update`` applied as is (unchecked, as pydantic's)."""
        new = type(self).__new__(type(self))
        values = dict(self.__dict__)
        if deep:
            values = {k: _deep(v) for k, v in values.items()}
        if update:
            values.update(update)
        new.__dict__.update(values)
        return new

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self.__dict__ == other.__dict__

    __hash__ = None  # type: ignore[assignment]  # mutable, like pydantic's models

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self)
        return f"{type(self).__name__}({inner})"

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        return iter(self._values().items())


def _json_default(value: Any) -> Any:
    if isinstance(value, Model):
        return value._values()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


_DECODER = json.JSONDecoder(parse_constant=_no_constant)


# str enums (Status) are str to the encoder; records, paths and other enums go by default
_JSON = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=_json_default
)
_PLAIN = frozenset({str, int, float, bool, type(None)})


def _dump(value: Any, to_json: bool) -> Any:
    if isinstance(value, Model):
        return value.model_dump(mode="json" if to_json else "python")
    if isinstance(value, dict):
        return {k: _dump(v, to_json) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_dump(v, to_json) for v in value]
    if to_json and isinstance(value, enum.Enum | Path):
        return _json_default(value)
    return value


def _deep(value: Any) -> Any:
    if isinstance(value, Model):
        return value.model_copy(deep=True)
    if isinstance(value, dict):
        return {k: _deep(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep(v) for v in value]
    return value


# -- converters: one per field, built once per class ---------------------------
def _field_converter(hint: Any, info: FieldInfo) -> Converter:
    convert = _converter(hint)
    checks = _checks(info)
    before, after = info.before, info.after
    if not checks and before is None and after is None:
        return convert

    def checked(value: Any, loc: Loc) -> Any:
        try:
            if before is not None:
                value = before(value)
            value = convert(value, loc)
            for check in checks:
                check(value, loc)
            return after(value) if after is not None else value
        except SchemaError:
            raise
        except ValueError as exc:
            raise SchemaError(loc, str(exc)) from None

    return checked


def _checks(info: FieldInfo) -> list[Callable[[Any, Loc], None]]:
    ge, gt, le, min_length = info.limits
    checks = []
    if ge is not None:
        checks.append(
            _limit(lambda v: v >= ge, f"greater than or equal to {_num(ge)}", "greater_than_equal")
        )
    if gt is not None:
        checks.append(_limit(lambda v: v > gt, f"greater than {_num(gt)}", "greater_than"))
    if le is not None:
        checks.append(
            _limit(lambda v: v <= le, f"less than or equal to {_num(le)}", "less_than_equal")
        )
    if min_length is not None:
        checks.append(_long_enough(min_length))
    if info.pattern is not None:
        checks.append(_matching(info.pattern))
    return checks


def _long_enough(least: int) -> Callable[[Any, Loc], None]:
    def check(value: Any, loc: Loc) -> None:
        if value is None or len(value) >= least:
            return
        if isinstance(value, str):
            unit = "character" if least == 1 else "characters"
            raise SchemaError(
                loc, f"String should have at least {least} {unit}", "string_too_short"
            )
        unit = "item" if least == 1 else "items"
        message = f"List should have at least {least} {unit} after validation, not {len(value)}"
        raise SchemaError(loc, message, "too_short")

    return check


def _matching(pattern: str) -> Callable[[Any, Loc], None]:
    import re

    # `$` ends the text, as in pydantic's engine (Python's also matches before a final \n)
    ends = pattern.endswith("$") and not pattern.endswith("\\$")
    compiled = re.compile(pattern[:-1] + "\\Z" if ends else pattern)

    def check(value: Any, loc: Loc) -> None:
        if value is not None and not compiled.search(value):
            raise SchemaError(
                loc, f"String should match pattern '{pattern}'", "string_pattern_mismatch"
            )

    return check


def _num(limit: float) -> str:
    return str(int(limit)) if float(limit).is_integer() else str(limit)


def _limit(ok: Callable[[Any], bool], text: str, kind: str) -> Callable[[Any, Loc], None]:
    def check(value: Any, loc: Loc) -> None:
        if value is not None and not ok(value):
            raise SchemaError(loc, f"Input should be {text}", kind)

    return check


def _converter(hint: Any) -> Converter:  # noqa: C901 - one branch per kind of annotation
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        convert = _converter(inner[0]) if len(inner) == 1 else _any
        if len(inner) == len(args):
            return convert
        return lambda v, loc: None if v is None else convert(v, loc)
    if origin is Literal:
        return _choice(args)
    if origin is dict:
        value_conv = _converter(args[1]) if args else _any

        def mapping(v: Any, loc: Loc) -> Any:
            if not isinstance(v, Mapping):
                raise SchemaError(loc, "Input should be a valid dictionary", "dict_type")
            out = {}
            for key, item in v.items():
                if not isinstance(key, str):
                    raise SchemaError(
                        (*loc, str(key)), "Input should be a valid string", "string_type"
                    )
                out[key] = value_conv(item, (*loc, key))
            return out

        return mapping
    if origin is list:
        item_conv = _converter(args[0]) if args else _any

        def sequence(v: Any, loc: Loc) -> Any:
            if not isinstance(v, list | tuple):
                raise SchemaError(loc, "Input should be a valid list", "list_type")
            return [item_conv(item, (*loc, i)) for i, item in enumerate(v)]

        return sequence
    if hint is Any:
        return _any
    if isinstance(hint, type):
        if issubclass(hint, Model):
            return hint._build
        if issubclass(hint, enum.Enum):
            return _choice(tuple(hint), hint)
        simple = _SIMPLE.get(hint)
        if simple is not None:
            return simple
    raise TypeError(f"schema: unsupported annotation {hint!r}")


def _as_is(hint: Any, info: FieldInfo) -> frozenset[type]:
    """The value types a field takes without a conversion or a check (none if it has
    checks): most values read back from JSON need no more than ``type(v) in``."""
    if any(limit is not None for limit in info.limits) or info.pattern or info.before or info.after:
        return frozenset()
    options = (
        typing.get_args(hint)
        if typing.get_origin(hint) in (typing.Union, types.UnionType)
        else (hint,)
    )
    taken = set()
    for option in options:
        plain = option is type(None) or option in (str, int, bool)  # a float: is it finite?
        if plain or (isinstance(option, type) and issubclass(option, enum.Enum)):
            taken.add(option)
        else:
            return frozenset()  # a container or a record: converted every time
    return frozenset(taken)  # exact types: True is no int here


def _any(value: Any, loc: Loc) -> Any:
    return value


def _choice(options: tuple[Any, ...], enum_type: type[enum.Enum] | None = None) -> Converter:
    values = [o.value if isinstance(o, enum.Enum) else o for o in options]
    quoted = [repr(v) for v in values]
    listed = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]
    lookup = {v: (enum_type(v) if enum_type is not None else v) for v in values}

    def choose(value: Any, loc: Loc) -> Any:
        try:
            return lookup[value.value if isinstance(value, enum.Enum) else value]
        except (KeyError, TypeError):
            kind = "enum" if enum_type is not None else "literal_error"
            raise SchemaError(loc, f"Input should be {listed}", kind) from None

    return choose


def _int(value: Any, loc: Loc) -> int:
    if type(value) is int:
        return value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        raise SchemaError(
            loc,
            "Input should be a valid integer, got a number with a fractional part",
            "int_from_float",
        )
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            with contextlib.suppress(ValueError, OverflowError):
                number = float(value)
                if number.is_integer():
                    return int(number)
            raise SchemaError(
                loc,
                "Input should be a valid integer, unable to parse string as an integer",
                "int_parsing",
            ) from None
    raise SchemaError(loc, "Input should be a valid integer", "int_type")


def _float(value: Any, loc: Loc) -> float:
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise SchemaError(
                loc,
                "Input should be a valid number, unable to parse string as a number",
                "float_parsing",
            ) from None
    elif isinstance(value, float | int):
        try:
            number = float(value)
        except OverflowError:  # an int too large for a float
            number = math.inf
    else:
        raise SchemaError(loc, "Input should be a valid number", "float_type")
    if not math.isfinite(number):
        raise SchemaError(loc, "Input should be a finite number", "finite_number")
    return number


def _str(value: Any, loc: Loc) -> str:
    if isinstance(value, str):
        return str(value)
    raise SchemaError(loc, "Input should be a valid string", "string_type")


_TRUE = {"1", "on", "t", "true", "y", "yes"}
_FALSE = {"0", "off", "f", "false", "n", "no"}


def _bool(value: Any, loc: Loc) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE or word in _FALSE:
            return word in _TRUE
    raise SchemaError(loc, "Input should be a valid boolean", "bool_type")


def _path(value: Any, loc: Loc) -> Path:
    if isinstance(value, Path):
        return value
    if isinstance(value, str):
        return Path(value)
    raise SchemaError(loc, "Input is not a valid path", "path_type")


_SIMPLE: dict[Any, Converter] = {int: _int, float: _float, str: _str, bool: _bool, Path: _path}
