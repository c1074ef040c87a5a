"""serde_keyvalue's grammar: how crosvm parses `key=value,flag,key="quoted, value"`.

A port of crosvm's serde_keyvalue/src/key_values.rs (commit f1e797a), close enough that a
value this accepts crosvm accepts, and a value it rejects crosvm rejects with the same
error kind at the same position:

- A key is an identifier: a letter, digit or `_`, then letters, digits, `_` or `-`. It is
  followed by `=` and a value, or stands alone (a boolean flag meaning true).
- A string value is double-quoted (`\\"` and `\\\\` are the only escapes), single-quoted
  (no escapes at all), or unquoted: then it ends at `,`, `[` or `]` and may not contain `"`
  or `'`. After any string the next character must be `,`, `]` or the end: `path=/a'b`
  fails with "\\" and ' can only be used in quoted strings" (any_string, parse_string).
- Numbers take an optional `-` and a `0x`/`0o`/`0b` prefix; booleans are `true`/`false`.
- The first field's name may be left out (`--block /disk.img`, `--cpus 2`): when the input
  does not start with an identifier followed by `=` that is not itself a field name
  (deserialize_struct's `next_identifier`). Flattened structures (`--net`) do not allow it.
- Unknown fields (deny_unknown_fields) and repeated fields are serde errors.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from crosvm_double.base import UsageError


class KeyValueError(UsageError):
    """A ParseError: `KIND at position N`, or a serde message on its own (position 0)."""

    def __init__(self, kind: str, pos: int | None = None) -> None:
        super().__init__(kind if pos is None else f"{kind} at position {pos}")
        self.kind = kind
        self.pos = pos


# ErrorKind's Display texts.
EXPECTED_BOOLEAN = "expected a boolean"
EXPECTED_CLOSE_BRACKET = "expected ']'"
EXPECTED_COMMA = "expected ','"
EXPECTED_EQUAL = "expected '='"
EXPECTED_IDENTIFIER = "expected an identifier"
EXPECTED_OPEN_BRACKET = "expected '['"
EXPECTED_STRING = "expected a string"
INVALID_CHAR_IN_STRING = "\" and ' can only be used in quoted strings"
INVALID_NUMBER = ("invalid characters for number or number does not fit into its "
                  "destination type")
TRAILING_CHARACTERS = "remaining characters in input"


@dataclasses.dataclass(frozen=True)
class Field:
    kind: str  # "bool", "int", "str", "choice", "list" (of ints), "struct-enum"
    choices: tuple[str, ...] = ()
    minimum: int = 0
    maximum: int = 2**64 - 1


BOOL = Field("bool")
STR = Field("str")
U8 = Field("int", maximum=2**8 - 1)
U16 = Field("int", maximum=2**16 - 1)
U32 = Field("int", maximum=2**32 - 1)
U64 = Field("int")
USIZE = U64
LIST = Field("list")


def choice(*values: str) -> Field:
    return Field("choice", values)


@dataclasses.dataclass(frozen=True)
class Spec:
    """A structure's fields, in declaration order (the first is the one that may go unnamed)."""

    fields: dict[str, Field]
    first_field_implicit: bool = True  # False for a flattened structure (parsed as a map)
    aliases: dict[str, str] = dataclasses.field(default_factory=dict)


_IDENTIFIER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")
_NUMBER = re.compile(r"(-)?(0x|0o|0b)?([A-Za-z0-9]+)")
_SEPARATORS = (",", "]", None)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def peek(self) -> str | None:
        return self.text[self.pos] if self.pos < len(self.text) else None

    def error(self, kind: str, pos: int | None = None) -> KeyValueError:
        return KeyValueError(kind, self.pos if pos is None else pos)

    def identifier(self) -> str:
        m = _IDENTIFIER.match(self.text, self.pos)
        if m is None:
            raise self.error(EXPECTED_IDENTIFIER)
        self.pos = m.end()
        return m.group(0)

    def string(self) -> str:
        """any_string, then parse_string's check that a separator follows."""
        c = self.peek()
        if c == '"':
            out: list[str] = []
            i = self.pos + 1
            while True:
                if i >= len(self.text):
                    self.pos = i
                    raise self.error(EXPECTED_STRING)
                ch = self.text[i]
                if ch == '"':
                    i += 1
                    break
                if ch == "\\":
                    nxt = self.text[i + 1] if i + 1 < len(self.text) else None
                    if nxt not in ('"', "\\"):
                        self.pos = i
                        raise self.error(EXPECTED_STRING)
                    out.append(nxt)
                    i += 2
                    continue
                out.append(ch)
                i += 1
            self.pos = i
            value = "".join(out)
        elif c == "'":
            end = self.text.find("'", self.pos + 1)
            if end < 0:
                self.pos = len(self.text)
                raise self.error(EXPECTED_STRING)
            value = self.text[self.pos + 1:end]
            self.pos = end + 1
        else:
            i = self.pos
            while i < len(self.text) and self.text[i] not in ',"\'[]':
                i += 1
            if i == self.pos:
                raise self.error(EXPECTED_STRING)
            value = self.text[self.pos:i]
            self.pos = i
        if self.peek() not in _SEPARATORS:
            raise self.error(INVALID_CHAR_IN_STRING)
        return value

    def number(self, field: Field) -> int:
        start = self.pos
        m = _NUMBER.match(self.text, self.pos)
        if m is None or (m.end() < len(self.text) and self.text[m.end()] not in ",]"):
            raise self.error(INVALID_NUMBER, start)
        sign, prefix, digits = m.groups()
        radix = {"0x": 16, "0o": 8, "0b": 2}.get(prefix or "", 10)
        try:
            value = int(digits, radix)
        except ValueError:
            raise self.error(INVALID_NUMBER, start) from None
        if sign:
            value = -value
        if not field.minimum <= value <= field.maximum:
            raise self.error(INVALID_NUMBER, start)
        self.pos = m.end()
        return value

    def boolean(self) -> bool:
        for word, value in (("true", True), ("false", False)):
            if self.text.startswith(word, self.pos):
                self.pos += len(word)
                return value
        raise self.error(EXPECTED_BOOLEAN)

    def confirm_separator(self) -> None:
        c = self.peek()
        if c == ",":
            self.pos += 1
        elif c not in ("]", None):
            raise self.error(EXPECTED_COMMA)

    def value(self, key: str, field: Field, has_equal: bool) -> Any:
        if field.kind == "bool":
            return self.boolean() if has_equal else True
        if field.kind == "int":
            return self.number(field)
        if field.kind == "str":
            return self.string()
        if field.kind == "choice":
            name = self.identifier()
            if name not in field.choices:
                expected = ", ".join(f"`{c}`" for c in field.choices)
                raise KeyValueError(f"unknown variant `{name}`, expected one of {expected}")
            return name
        if field.kind == "list":
            if self.peek() != "[":
                raise self.error(EXPECTED_OPEN_BRACKET)
            self.pos += 1
            items = []
            while self.peek() not in ("]", None):
                items.append(self.number(U64))
                self.confirm_separator()
            if self.peek() != "]":
                raise self.error(EXPECTED_CLOSE_BRACKET)
            self.pos += 1
            return items
        raise AssertionError(f"field kind {field.kind} of `{key}`")

    def structure(self, spec: Spec) -> dict[str, Any]:
        implicit: str | None = None
        first = next(iter(spec.fields))
        if spec.first_field_implicit and self.peek() not in ("]", None):
            m = _IDENTIFIER.match(self.text, self.pos)
            named = m is not None and (self.text[m.end():m.end() + 1] == "="
                                       or m.group(0) in spec.fields)
            if not named:
                implicit = first
        result: dict[str, Any] = {}
        while self.peek() not in ("]", None):
            # The order of the checks is serde's: the key names a field (deny_unknown_fields),
            # then `=` or a separator follows it, then a repeated field is refused.
            if implicit is not None:
                key, implicit, has_equal = implicit, None, True
                field = spec.fields[key]
            else:
                key = self.identifier()
                key = spec.aliases.get(key, key)
                found = spec.fields.get(key)
                if found is None:
                    expected = ", ".join(f"`{k}`" for k in spec.fields)
                    raise KeyValueError(f"unknown field `{key}`, expected one of {expected}")
                field = found
                c = self.peek()
                if c == "=":
                    self.pos += 1
                    has_equal = True
                elif c in _SEPARATORS:
                    has_equal = False
                else:
                    raise self.error(EXPECTED_EQUAL)
            if key in result:
                raise KeyValueError(f"duplicate field `{key}`")
            result[key] = self.value(key, field, has_equal)
            self.confirm_separator()
        return result


def from_key_values(text: str, spec: Spec) -> dict[str, Any]:
    """Parse `text` as the structure `spec`; raise KeyValueError as serde_keyvalue would."""
    parser = _Parser(text)
    result = parser.structure(spec)
    if parser.pos != len(text):
        raise parser.error(TRAILING_CHARACTERS)
    return result


def enum_with_struct(text: str, variants: dict[str, Spec]) -> tuple[str, dict[str, Any]]:
    """An enum whose variants carry a structure in brackets: `kvm[device=/dev/kvm]`."""
    parser = _Parser(text)
    name = parser.identifier()
    if name not in variants:
        expected = ", ".join(f"`{v}`" for v in variants)
        raise KeyValueError(f"unknown variant `{name}`, expected one of {expected}")
    fields: dict[str, Any] = {}
    if parser.peek() == "[":
        parser.pos += 1
        fields = parser.structure(variants[name])
        if parser.peek() != "]":
            raise parser.error(EXPECTED_CLOSE_BRACKET)
        parser.pos += 1
    if parser.pos != len(text):
        raise parser.error(TRAILING_CHARACTERS)
    return name, fields
