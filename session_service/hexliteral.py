"""Bytes sent to MySQL/MariaDB as hexadecimal literals, X'...'.

Both drivers (PyMySQL, asyncmy) put parameters into the statement text, and they
escape a binary string character by character: about 65 ns per byte, 70 ms of CPU
for a 1 MiB session (measured). bytes.hex() runs in C, 20 times faster, and MySQL
reads X'...' as the same binary string. The statement grows to twice the data's
size, so values beyond HEX_LIMIT keep the escaped form, which needs less of
max_allowed_packet.
"""

from __future__ import annotations

from typing import Any

HEX_LIMIT = 4 * 1024 * 1024


class HexLiteral:
    """A bytes parameter, already written as the SQL literal X'...'."""

    __slots__ = ("literal",)

    def __init__(self, value: bytes) -> None:
        self.literal = "X'" + value.hex() + "'"


def encode_hex_literal(value: HexLiteral, mapping: Any = None) -> str:
    """The driver-side encoder (PyMySQL's and asyncmy's `conv` signature)."""
    return value.literal


def conversions(base: dict[Any, Any]) -> dict[Any, Any]:
    """A driver's own conversion table, plus HexLiteral."""
    return {**base, HexLiteral: encode_hex_literal}


def _convert(value: Any) -> Any:
    if isinstance(value, bytes) and len(value) <= HEX_LIMIT:
        return HexLiteral(value)
    return value


def with_hex_literals(parameters: Any) -> Any:
    """The same statement parameters (a dict, a sequence, or a list of either for
    executemany), with each bytes value up to HEX_LIMIT as a HexLiteral."""
    if isinstance(parameters, dict):
        return {key: _convert(value) for key, value in parameters.items()}
    if isinstance(parameters, tuple):
        return tuple(_convert(value) for value in parameters)
    if isinstance(parameters, list):
        return [with_hex_literals(item) for item in parameters]
    return parameters
