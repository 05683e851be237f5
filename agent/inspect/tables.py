"""Tables of the inspection CLI: IDs whole, the rest fitted to the terminal's width."""

from __future__ import annotations

import click
from rich import box
from rich.console import Console
from rich.table import Column, Table
from rich.text import Text

# IDs are copied from the table: never wrapped or cut, however narrow the terminal.
WHOLE_COLUMNS = ("ID", "Task ID")
# Free text that gives way first when the table is wider than the terminal: one line each,
# elided with "…" to the width the other columns leave.
ELIDED_COLUMNS = ("Payload", "Last error", "Result")
ELIDED_MIN = 8  # an elided column keeps this much when the other columns fit beside it
NARROWEST = 4  # no column is narrower: on a terminal too narrow for that, lines wrap there
GAP = 3  # between two columns: padding, separator, padding


def new_table(*columns: str, right: tuple[str, ...] = (), footer: bool = False) -> Table:
    """A table whose ID columns stay whole and whose other columns fold (wrap anywhere)."""
    table = Table(box=box.SIMPLE, pad_edge=False, show_edge=False, show_footer=footer)
    for name in columns:
        justify = "right" if name in right else "left"
        if name in WHOLE_COLUMNS:
            table.add_column(name, justify=justify, no_wrap=True, overflow="ignore")
        else:
            table.add_column(name, justify=justify, overflow="fold")
    return table


def _natural_width(column: Column) -> int:
    return max(Text(str(cell)).cell_len for cell in (column.header, column.footer, *column.cells))


def fair_share(wants: list[int], total: int) -> list[int]:
    """Share ``total`` between columns wanting ``wants``: none gets more than it wants, and
    the narrow ones are served first (max-min fairness)."""
    shares = [0] * len(wants)
    left = total
    order = sorted(range(len(wants)), key=wants.__getitem__)
    for served, index in enumerate(order):
        shares[index] = max(0, min(wants[index], left // (len(wants) - served)))
        left -= shares[index]
    return shares


def fit_table(out: Console, table: Table) -> int:
    """Fit ``table`` to the console's width without touching its IDs; returns the width to
    print it at (wider than the console only when even NARROWEST columns do not fit).

    When it is too wide, the free-text columns (ELIDED_COLUMNS) are elided to the width the
    other columns leave them, down to ELIDED_MIN; below that, all but the IDs share the
    width fairly (none narrower than NARROWEST), the free text elided and the rest folded.
    ID columns keep the width of their longest ID.
    """
    columns = table.columns
    natural = [_natural_width(column) for column in columns]
    for column, width in zip(columns, natural, strict=True):
        if column.header in WHOLE_COLUMNS:
            column.min_width = width
    gaps = GAP * (len(columns) - 1)
    if sum(natural) + gaps <= out.width:
        return out.width
    whole = [i for i, c in enumerate(columns) if c.header in WHOLE_COLUMNS]
    elided = [i for i, c in enumerate(columns) if c.header in ELIDED_COLUMNS]
    folded = [i for i in range(len(columns)) if i not in whole and i not in elided]
    room = out.width - gaps - sum(natural[i] for i in whole)
    widths: dict[int, int] = {}
    beside = room - sum(natural[i] for i in folded)
    if elided and beside >= sum(min(ELIDED_MIN, natural[i]) for i in elided):
        widths.update((i, natural[i]) for i in folded)
        widths.update(zip(elided, fair_share([natural[i] for i in elided], beside), strict=True))
    else:
        shared = folded + elided
        widths.update(zip(shared, fair_share([natural[i] for i in shared], room), strict=True))
    for index, width in widths.items():
        column = columns[index]
        column.width = max(min(NARROWEST, natural[index]), width)
        if index in elided:
            column.no_wrap, column.overflow = True, "ellipsis"
    needed = gaps + sum(natural[i] for i in whole) + sum(columns[i].width or 0 for i in widths)
    return max(out.width, needed)


def print_table(out: Console, table: Table, title: str | None = None) -> None:
    """Print an optional title line, then the table (fitted by ``fit_table``) without
    trailing blanks."""
    if title:
        click.echo(title)
    width, out.width = out.width, fit_table(out, table)
    try:
        with out.capture() as captured:
            out.print(table, crop=False)
    finally:
        out.width = width
    click.echo("\n".join(line.rstrip() for line in captured.get().rstrip("\n").split("\n")),
               color=out.is_terminal)
