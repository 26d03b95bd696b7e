"""Typed records on msgspec: the settings, the role files and the core data model.

Every command loads these, so they are ``msgspec.Struct`` s (pydantic costs a
command ~80 ms; msgspec builds the models and decodes a task many times faster
than the hand-written checker it replaced). ``Record`` adds the few
pydantic-named methods the code calls (``model_validate``, ``model_dump``…), so
a reader knows them and the state stores need no change.

Input from people (YAML, ``.env``, environment variables) goes through
``model_validate``: msgspec's lax mode (``"5"`` is an int, ``5.5`` is not), no
infinities, an unknown key refused (``forbid_unknown_fields``) or dropped. Its
errors are translated by ``translate`` into one ``RecordError`` with where
(``loc``) and pydantic's words, which the CLI's messages have always used.
JSON a store or a queue wrote goes through ``model_validate_json``: one cached
strict ``msgspec.json.Decoder`` per record type.
"""

from __future__ import annotations

import enum
import functools
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Self

import msgspec

Loc = tuple[str | int, ...]


class RecordError(ValueError):
    """A value that does not fit its field: where (``loc``), what, and pydantic's type code."""

    def __init__(self, loc: Loc, msg: str, kind: str = "value_error") -> None:
        super().__init__(f"{'.'.join(map(str, loc)) or 'input'}: {msg}")
        self.loc = loc
        self.msg = msg
        self.kind = kind

    def errors(self) -> list[dict[str, Any]]:
        return [{"loc": self.loc, "msg": self.msg, "type": self.kind}]


class FieldError(ValueError):
    """Raised by a record's ``__post_init__``: its check of one field failed."""

    def __init__(self, field: str, msg: str) -> None:
        super().__init__(msg)
        self.field = field


class Record(msgspec.Struct):
    """Base of every record; subclasses pass ``forbid_unknown_fields=True`` to refuse
    unknown keys (the default drops them)."""

    @classmethod
    def model_validate(cls, data: Any) -> Self:
        """``data`` (plain Python: YAML, env) checked and converted, lax; RecordError."""
        try:
            record = msgspec.convert(data, cls, strict=False, dec_hook=_dec_hook)
        except msgspec.ValidationError as exc:
            raise translate(exc, cls, data) from None
        _check_finite(record, ())
        return record

    @classmethod
    def model_validate_json(cls, text: str | bytes) -> Self:
        """A record from JSON that orchestra wrote (a store, a queue); RecordError."""
        try:
            record: Self = _decoder(cls).decode(text)
            return record
        except msgspec.ValidationError as exc:
            # JSON that is malformed further on is reported as such, as before the
            # record's checks (msgspec checks while it parses)
            raise translate(exc, cls, _plain_json(text)) from None
        except (msgspec.DecodeError, RecursionError) as exc:
            raise _invalid_json(exc) from None

    def model_dump(self, *, mode: Literal["python", "json"] = "python") -> dict[str, Any]:
        """The fields as a dict, nested records too; ``json``: JSON types only."""
        if mode == "json":
            out: dict[str, Any] = msgspec.to_builtins(self, enc_hook=_enc_hook)
            return out
        return {name: _python(getattr(self, name)) for name in self.__struct_fields__}

    def model_dump_json(self) -> str:
        return _ENCODER.encode(self).decode()

    def model_copy(self, *, update: Mapping[str, Any] | None = None) -> Self:
        """A copy with ``update`` applied as is (unchecked, as pydantic's)."""
        return msgspec.structs.replace(self, **(update or {}))


@functools.cache
def _decoder(cls: type[Record]) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(cls, dec_hook=_dec_hook)


def _plain_json(text: str | bytes) -> Any:
    try:
        return msgspec.json.decode(text)
    except msgspec.ValidationError:  # a number out of range: the record's error says where
        return None
    except (msgspec.DecodeError, RecursionError) as exc:
        raise _invalid_json(exc) from None


def _invalid_json(exc: Exception) -> RecordError:
    reason = "nested too deeply" if isinstance(exc, RecursionError) else exc
    return RecordError((), f"Invalid JSON: {reason}", "json_invalid")


def _dec_hook(kind: type, value: Any) -> Any:
    if kind is Path:
        if isinstance(value, Path):
            return value
        if not isinstance(value, str):
            raise ValueError("Input is not a valid path")
        if not value.strip():
            raise ValueError("is empty (it would mean the current directory)")
        return Path(value)
    raise NotImplementedError(f"records: unsupported type {kind!r}")


def _enc_hook(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    raise NotImplementedError(f"not JSON serializable: {type(value).__name__}")


_ENCODER = msgspec.json.Encoder(enc_hook=_enc_hook)
_PLAIN = frozenset({str, int, float, bool, type(None)})


def _python(value: Any) -> Any:
    if type(value) in _PLAIN:
        return value
    if isinstance(value, Record):
        return value.model_dump()
    if isinstance(value, dict):
        return {k: _python(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_python(v) for v in value]
    return value


def _check_finite(value: Any, loc: Loc) -> None:
    """No infinity or NaN anywhere in a record (msgspec would write it as null)."""
    if type(value) is float:
        if not math.isfinite(value):
            raise RecordError(loc, "Input should be a finite number", "finite_number")
    elif isinstance(value, msgspec.Struct):
        for name in value.__struct_fields__:
            _check_finite(getattr(value, name), (*loc, name))
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_finite(item, (*loc, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_finite(item, (*loc, i))


# -- msgspec's errors in pydantic's words ----------------------------------------
_STEP = re.compile(r"\.(\w+)|\[(\d+)\]|\[\.\.\.\]")
_BOUND = {">=": "greater than or equal to", ">": "greater than", "<=": "less than or equal to"}
_BOUND["<"] = "less than"
_TYPE_WORDS = {
    "str": ("Input should be a valid string", "string_type"),
    "bool": ("Input should be a valid boolean", "bool_type"),
    "int": ("Input should be a valid integer", "int_type"),
    "float": ("Input should be a valid number", "float_type"),
    "object": ("Input should be a valid dictionary", "dict_type"),
    "array": ("Input should be a valid list", "list_type"),
}


def translate(exc: msgspec.ValidationError, cls: type, data: Any) -> RecordError:
    """msgspec's ``Expected `int` >= 1 - at `$.agents.concurrency``` as a RecordError
    (``loc`` ``("agents", "concurrency")``, "Input should be greater than or equal to
    1"); ``data`` (the input) names the keys msgspec leaves out (``$.servers[...]``)."""
    text = str(exc)
    message, sep, where = text.rpartition(" - at `")
    if not sep:
        message, where = text, "$`"
    key_error = where.startswith("key` in `")
    path = where.removeprefix("key` in `")[:-1]
    loc, hint, value = _walk(cls, data, path)
    if key_error:  # a key of a mapping that is not a string
        bad = next((k for k in value if not isinstance(k, str)), "?") if _is_map(value) else "?"
        loc, value = (*loc, str(bad)), bad
    cause = exc.__cause__
    if isinstance(cause, FieldError):  # a record's own check, about one of its fields
        return RecordError((*loc, cause.field), str(cause))
    named = re.fullmatch(r"Object (missing required|contains unknown) field `(\w+)`", message)
    if named:
        missing = named[1] == "missing required"
        words = ("Field required", "missing") if missing else ("Extra inputs are not permitted",)
        return RecordError((*loc, named[2]), *words, *(() if missing else ("extra_forbidden",)))
    return RecordError(loc, *_words(message, hint, value))


def _words(message: str, hint: Any, value: Any) -> tuple[str, str]:
    """pydantic's message and type code for msgspec's ``message`` about ``value``."""
    if _not_finite(value) or message in ("Number out of range", "Integer value out of range"):
        return "Input should be a finite number", "finite_number"
    if m := re.fullmatch(r"Expected `(\w+)` of length ([<>]=) (\d+)", message):
        return _length(m[1], m[2] == ">=", int(m[3]))
    if m := re.fullmatch(r"Expected `str` matching regex '(.*)'", message, re.DOTALL):
        pattern = m[1].replace("\\\\", "\\")  # msgspec shows the pattern's repr
        if pattern.endswith("\\Z"):  # `$` would take a final newline; it reads as `$`
            pattern = pattern[:-2] + "$"
        return f"String should match pattern '{pattern}'", "string_pattern_mismatch"
    if m := re.fullmatch(r"Expected `\w+` (>=|>|<=|<) (\S+)", message):
        return f"Input should be {_BOUND[m[1]]} {_number(m[2])}", "limit"
    if message.startswith("Invalid enum value"):
        return f"Input should be {_choices(hint)}", "enum"
    if m := re.fullmatch(r"Expected `(\w+)[^`]*`, got `(\w+)`", message):
        expected, got = m[1], m[2]
        if expected == "int" and got == "float":
            return (
                "Input should be a valid integer, got a number with a fractional part",
                "int_from_float",
            )
        if expected in ("int", "float") and got == "str":
            noun = "an integer" if expected == "int" else "a number"
            name = "integer" if expected == "int" else "number"
            code = "int_parsing" if expected == "int" else "float_parsing"
            return f"Input should be a valid {name}, unable to parse string as {noun}", code
        return _TYPE_WORDS.get(expected, (message, "type_error"))
    return message, "value_error"  # a record's own check: its words


def _length(kind: str, least: bool, n: int) -> tuple[str, str]:
    what = {"str": "String", "array": "List"}.get(kind, "Dictionary")
    unit = ("character" if kind == "str" else "item") + ("" if n == 1 else "s")
    code = ("string_too_" if kind == "str" else "too_") + ("short" if least else "long")
    return f"{what} should have at {'least' if least else 'most'} {n} {unit}", code


def _number(text: str) -> str:
    return text.removesuffix(".0")


def _not_finite(value: Any) -> bool:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return False
    return isinstance(value, float) and not math.isfinite(value)


def _choices(hint: Any) -> str:
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return one_of([m.value for m in hint])
    return one_of([a for a in typing.get_args(hint) if a is not None])


def one_of(options: Sequence[Any]) -> str:
    """``'a', 'b' or 'c'``: the values a field allows, as pydantic lists them."""
    quoted = [repr(o) for o in options] or ["one of the allowed values"]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


def _is_map(value: Any) -> bool:
    return isinstance(value, Mapping)


def _walk(cls: type, data: Any, path: str) -> tuple[Loc, Any, Any]:
    """The ``loc`` of msgspec's ``$.a[0][...]`` path, the type there and the input value
    there; ``[...]`` (a mapping's key) is the first key whose value does not fit."""
    loc: list[str | int] = []
    hint: Any = cls
    value = data
    for step in _STEP.finditer(path.removeprefix("$")):
        name, index = step[1], step[2]
        if name is not None:
            hint = _field_hint(hint, name)
            value = value.get(name) if _is_map(value) else None
            loc.append(name)
        elif index is not None:
            hint = _arg(hint, 0)
            value = value[int(index)] if isinstance(value, list | tuple) else None
            loc.append(int(index))
        else:
            hint = _arg(hint, 1)
            key = _first_misfit(value, hint) if _is_map(value) else None
            value = value[key] if key is not None else None
            loc.append(str(key) if key is not None else "?")
    return tuple(loc), _bare(hint), value


def _first_misfit(mapping: Mapping[Any, Any], hint: Any) -> Any:
    for key, item in mapping.items():
        try:
            msgspec.convert(item, hint, strict=False, dec_hook=_dec_hook)
        except msgspec.ValidationError:
            return key
    return None


def _bare(hint: Any) -> Any:
    """``hint`` without ``Annotated`` and without ``| None``."""
    while typing.get_origin(hint) is typing.Annotated:
        hint = hint.__origin__
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(options) == 1:
            return _bare(options[0])
    return hint


def _field_hint(hint: Any, name: str) -> Any:
    hint = _bare(hint)
    if isinstance(hint, type) and issubclass(hint, msgspec.Struct):
        return _hints(hint).get(name, Any)
    return Any


def _arg(hint: Any, index: int) -> Any:
    args = typing.get_args(_bare(hint))
    return args[index] if len(args) > index else Any


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)
