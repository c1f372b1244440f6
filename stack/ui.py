"""Terminal output: rich when stdout is a terminal, plain aligned text otherwise."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table


class Output:
    """Progress lines, notes and one streaming table; rich on a TTY, plain text elsewhere."""

    def __init__(self, plain: bool | None = None) -> None:
        self.plain = (not sys.stdout.isatty()) if plain is None else plain
        self.console = Console(highlight=False, soft_wrap=True)
        self._live: Live | None = None
        self._table: Table | None = None
        self._widths: list[int] = []

    def step(self, text: str) -> None:
        """A progress line (something is being started or done)."""
        self._print(f"[cyan]>>[/] {text}", f">> {text}")

    def note(self, text: str, style: str = "bold") -> None:
        self._print(f"[{style}]{text}[/]", text)

    def ok(self, text: str) -> None:
        self._print(f"[bold green]OK[/] {text}", f"OK {text}")

    def fail(self, text: str) -> None:
        self._print(f"[bold red]FAIL[/] {text}", f"FAIL {text}")

    def _print(self, rich_text: str, plain_text: str) -> None:
        if self.plain:
            print(plain_text, flush=True)
        elif self._live is not None:
            self._live.console.print(rich_text)
        else:
            self.console.print(rich_text)

    # ------------------------------------------------------------------ table

    def table_start(self, title: str, columns: Sequence[tuple[str, int]]) -> None:
        """Start a table; ``columns`` are (header, plain-text width)."""
        if self.plain:
            self._widths = [w for _, w in columns]
            print(title, flush=True)
            print(self._plain_row([h for h, _ in columns]), flush=True)
            print(self._plain_row(["-" * w for w in self._widths]), flush=True)
            return
        table = Table(title=title, title_justify="left", header_style="bold")
        for header, _ in columns:
            table.add_column(header, no_wrap=True)
        self._table = table
        self._live = Live(table, console=self.console, auto_refresh=False)
        self._live.start()

    def _plain_row(self, cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, self._widths, strict=False)).rstrip()

    def row(self, cells: Sequence[str], style: str | None = None) -> None:
        if self.plain:
            print(self._plain_row(cells), flush=True)
            return
        assert self._table is not None and self._live is not None
        self._table.add_row(*cells, style=style)
        self._live.refresh()

    def section(self, text: str) -> None:
        """A line across the table (e.g. 'web2 stopped')."""
        if self.plain:
            print(f"-- {text} --", flush=True)
            return
        assert self._table is not None and self._live is not None
        self._table.add_section()
        columns = len(self._table.columns)
        self._table.add_row("", f"[bold yellow]{text}[/]", *([""] * (columns - 2)))
        self._table.add_section()
        self._live.refresh()

    def table_end(self) -> None:
        if self._live is not None:
            self._live.stop()
        self._live = None
        self._table = None

    def kv(self, pairs: Sequence[tuple[str, Any]]) -> None:
        """Aligned 'label  value' lines."""
        width = max(len(k) for k, _ in pairs)
        for key, value in pairs:
            self._print(f"  [bold]{key.ljust(width)}[/]  {value}", f"  {key.ljust(width)}  {value}")
