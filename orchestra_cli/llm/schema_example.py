"""A deterministic value that follows a JSON schema: the offline provider's structured answer.

It covers what structured outputs use — ``type`` (or a list of types),
``enum``, ``const``, ``$ref`` into ``$defs``, ``anyOf`` / ``oneOf`` /
``allOf``, required properties, array and string lengths, numeric bounds —
choosing the first option, the least value and the fewest items allowed
(at least one). Strings say ``[offline]``. ``pattern`` and ``format`` are not
followed: nothing orchestra asks for offline uses them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

LABEL = "[offline]"
_DEPTH_LIMIT = 32  # a recursive schema stops here (with None)
Handler = Callable[[dict[str, Any], dict[str, Any], int], Any]


def example(schema: dict[str, Any]) -> Any:
    """A value valid against ``schema`` (the root is where ``$ref`` resolves)."""
    return _value(schema, schema, 0)


def _resolve(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = root
        for part in str(node["$ref"]).removeprefix("#/").split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _value(node: dict[str, Any], root: dict[str, Any], depth: int) -> Any:
    node = _resolve(node, root)
    if depth > _DEPTH_LIMIT:
        return None
    if "const" in node:
        return node["const"]
    if node.get("enum"):
        return node["enum"][0]
    for key in ("anyOf", "oneOf"):
        if node.get(key):
            options = [_resolve(o, root) for o in node[key]]
            chosen = next((o for o in options if o.get("type") != "null"), options[0])
            return _value(chosen, root, depth + 1)
    if node.get("allOf"):
        merged: dict[str, Any] = {}
        for part in node["allOf"]:
            merged.update(_resolve(part, root))
        return _value(merged, root, depth + 1)
    kind = node.get("type", "object" if "properties" in node else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    handler: Handler = _BY_TYPE.get(str(kind), _string)
    return handler(node, root, depth)


def _object(node: dict[str, Any], root: dict[str, Any], depth: int) -> dict[str, Any]:
    props: dict[str, Any] = node.get("properties") or {}
    required = node.get("required", list(props))
    return {name: _value(props.get(name, {}), root, depth + 1) for name in required}


def _array(node: dict[str, Any], root: dict[str, Any], depth: int) -> list[Any]:
    count = max(1, int(node.get("minItems", 0)))
    if "maxItems" in node:
        count = min(count, int(node["maxItems"]))
    items = node.get("items") or {}
    return [_value(items, root, depth + 1) for _ in range(count)]


def _number(node: dict[str, Any], _root: dict[str, Any], _depth: int) -> int | float:
    low: float = 0
    if "minimum" in node:
        low = node["minimum"]
    elif "exclusiveMinimum" in node:
        low = node["exclusiveMinimum"] + 1
    if "maximum" in node:
        low = min(low, node["maximum"])
    return math.ceil(low) if node.get("type") == "integer" else low


def _string(node: dict[str, Any], _root: dict[str, Any], _depth: int) -> str:
    text = LABEL
    shortest = int(node.get("minLength", 0))
    if len(text) < shortest:
        text += "x" * (shortest - len(text))
    return text[: int(node.get("maxLength", len(text)))]


def _false(_node: dict[str, Any], _root: dict[str, Any], _depth: int) -> bool:
    return False


def _null(_node: dict[str, Any], _root: dict[str, Any], _depth: int) -> None:
    return None


_BY_TYPE: dict[str, Handler] = {
    "object": _object,
    "array": _array,
    "integer": _number,
    "number": _number,
    "string": _string,
    "boolean": _false,
    "null": _null,
}
