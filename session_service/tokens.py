"""Bearer tokens: the format of --tokens and the tokens file, read strictly or leniently.

An item is `namespace:secret`, `namespace+admin:secret` (the admin scope: may run
`POST /v1/gc` for every namespace) or a bare `secret` (namespace default). Items are
separated by commas; in the file also by line breaks. `+` never appears in a
namespace, so files written before the admin scope existed mean what they meant.

At start-up every problem is fatal (the service does not start, as nginx does not
with a bad configuration). When the file changes under a running service, a bad
line must not keep old tokens alive (a revocation that silently did not happen):
the lines that parse are applied, each bad line is refused and named, and nothing
that did not parse grants anything (see TokenAuth).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from session_service.ids import check_namespaces

if TYPE_CHECKING:
    from session_service.settings import Settings

#: scopes a token may carry after its namespace ("shop+admin:secret")
SCOPES = frozenset({"admin"})


@dataclass(frozen=True)
class Token:
    """What a secret grants: its namespace, and whether it has the admin scope."""

    namespace: str
    admin: bool = False


@dataclass
class TokenSet:
    """Tokens read from one or more sources, with the problems of the items refused."""

    tokens: dict[str, Token] = field(default_factory=dict)
    #: one line per refused item, naming where it is ("tokens file /x line 3: ...")
    problems: list[str] = field(default_factory=list)
    #: items seen, valid or not
    items: int = 0
    #: every namespace named, valid or not (to name two that differ only in case)
    namespaces: list[str] = field(default_factory=list)
    #: the tokens file could not be read, or had no item at all (read between an
    #: editor's truncate and its write, most likely): it tells nothing new
    unreadable: bool = False
    file_empty: bool = False


def parse_item(item: str) -> tuple[str, Token]:
    """(secret, token) of one item; ValueError naming the problem (never the secret)."""
    left, sep, secret = item.partition(":")
    if not sep:
        left, secret = "default", item
    namespace, *scopes = left.strip().split("+")
    namespace, secret = namespace.strip(), secret.strip()
    if not secret:
        raise ValueError(f"token for namespace {namespace!r} has an empty secret")
    check_namespaces([namespace])  # InvalidNamespace, a ValueError: [a-z0-9_.-]{1,64}
    unknown = [scope.strip() for scope in scopes if scope.strip() not in SCOPES]
    if unknown:
        raise ValueError(f"unknown scope {unknown[0]!r} for namespace {namespace!r} (known: admin)")
    return secret, Token(namespace, admin="admin" in (scope.strip() for scope in scopes))


def collect(text: str, where: str, into: TokenSet | None = None) -> TokenSet:
    """Every item of `text` (commas, or lines) added to `into`; a bad item, or a secret
    given two meanings, is a problem named by its line, and grants nothing."""
    found = into if into is not None else TokenSet()
    meanings: dict[str, set[Token]] = {}
    lines: dict[str, list[int]] = {}
    for number, line in enumerate(text.splitlines() or [""], start=1):
        for raw in line.split(","):
            item = raw.strip()
            if not item:
                continue
            found.items += 1
            place = f"{where} line {number}" if where.startswith("tokens file") else where
            found.namespaces.append(
                item.partition(":")[0].split("+")[0].strip() if ":" in item else "default"
            )
            try:
                secret, token = parse_item(item)
            except ValueError as error:
                found.problems.append(f"{place}: {error}")
                continue
            meanings.setdefault(secret, set()).add(token)
            lines.setdefault(secret, []).append(number)
    for secret, tokens in meanings.items():
        known = found.tokens.get(secret)
        if known is not None:
            tokens.add(known)
        if len(tokens) > 1:
            found.tokens.pop(secret, None)
            at = ", ".join(str(n) for n in lines[secret])
            found.problems.append(
                f"{where} (lines {at}): one secret is given two meanings "
                f"({', '.join(sorted(describe(t) for t in tokens))}); refused"
            )
        else:
            found.tokens[secret] = next(iter(tokens))
    return found


def describe(token: Token) -> str:
    return token.namespace + ("+admin" if token.admin else "")


def load(settings: Settings) -> TokenSet:
    """--tokens plus the tokens file, leniently: see the module docstring."""
    found = collect(settings.tokens, "--tokens")
    if settings.tokens_file:
        try:
            with open(settings.tokens_file, encoding="utf-8") as handle:
                text = handle.read()
        except (OSError, UnicodeDecodeError) as error:
            found.problems.append(f"cannot read tokens file {settings.tokens_file}: {error}")
            found.unreadable = True
            return found
        before = found.items
        collect(text, f"tokens file {settings.tokens_file}", found)
        found.file_empty = found.items == before
    return found


def strict(found: TokenSet) -> dict[str, Token]:
    """The tokens, if there was no problem at all; else InvalidNamespace for namespaces
    that differ only in case (named together), or ValueError listing every problem."""
    check_namespaces(found.namespaces)
    if found.problems:
        raise ValueError("; ".join(found.problems))
    return found.tokens


def read_strictly(settings: Settings) -> dict[str, Token]:
    """Every configured token; raises as `strict` does (used at start-up)."""
    return strict(load(settings))
