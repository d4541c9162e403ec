"""Rich rendering of pruning results for the CLI."""
from __future__ import annotations

from rich.table import Table


def _coupled(names: list[str], limit: int = 3) -> str:
    if not names:
        return "-"
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} +{len(names) - limit} more"


def prune_table(result) -> Table:
    """One row per producer group of a :class:`~edgeprune.pipeline.prune.pruner.PruneResult`:
    layer, coupled layers, width before -> after, % removed, method or frozen reason."""
    table = Table(title=f"pruned at rate {result.rate:g} ({result.plan.criterion or '-'})",
                  title_justify="left", show_lines=False, pad_edge=False)
    table.add_column("layer", no_wrap=True)
    table.add_column("coupled with")
    table.add_column("width", justify="right", no_wrap=True)
    table.add_column("removed", justify="right", no_wrap=True)
    table.add_column("method / frozen because")
    for row in result.layers:
        removed = 100.0 * (row.before - row.after) / row.before if row.before else 0.0
        method = row.method or ("unchanged" if row.after == row.before else "")
        style = "dim" if method.startswith("frozen") else None
        table.add_row(row.layer, _coupled(list(row.coupled)), f"{row.before} -> {row.after}",
                      f"{removed:.0f}%", method, style=style)
    return table
