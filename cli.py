"""The ``edgeprune`` command line.

Commands stay thin: they parse options, call one stage of ``edgeprune.pipeline`` or
``edgeprune.devices`` and render its result object. Every failure the user can fix is an
:class:`~edgeprune.errors.EdgepruneError`, printed as one message (no traceback) with its
exit code; see ``errors.py`` for the codes.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import click
import typer
from rich.console import Console

from edgeprune import __version__
from edgeprune.errors import EXIT_BAD_INPUT, EdgepruneError

EXIT_CODES_HELP = (
    "Exit codes: 0 success; 2 bad input; 3 (run) no candidate meets every limit; "
    "4 device unreachable or unusable."
)

app = typer.Typer(
    name="edgeprune",
    help="Prune a Keras model structurally, convert it to TFLite and measure it on the "
    "board it must fit. " + EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

out = Console()  # results: tables, JSON
err = Console(stderr=True)  # progress, warnings, errors


def _version(value: bool) -> None:
    if value:
        out.print(f"edgeprune {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """edgeprune: structural pruning + TFLite + on-device measurement."""


# --------------------------------------------------------------------------- prune
@app.command()
def prune(
    model: Annotated[Path, typer.Argument(help="Keras model: .keras, or a Keras 2/3 .h5 file.")],
    rate: Annotated[float, typer.Option(help="Fraction of each prunable layer's channels to remove (0 <= rate < 1).")] = 0.5,
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Where to write the pruned model (.keras).")] = Path("pruned.keras"),
    criterion: Annotated[str, typer.Option(help="Importance criterion: paoding (data-free, default), l1, random.")] = "paoding",
    step: Annotated[float, typer.Option(help="Fraction of the prunable channels removed per progressive step.")] = 0.05,
    round_to: Annotated[Optional[int], typer.Option("--round-to", help="Keep every pruned width a multiple of N.")] = None,
    input_range: Annotated[str, typer.Option("--input-range", help="Input range for PAODING's interval bounds, 'LO,HI'.")] = "0,1",
    seed: Annotated[int, typer.Option(help="Seed for the random criterion.")] = 0,
    plan_path: Annotated[Optional[Path], typer.Option("--plan", help="Also write the replayable plan (JSON) here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the per-layer result as JSON.")] = False,
) -> None:
    """Prune MODEL structurally and write the smaller model, printing a per-layer table."""
    from edgeprune.pipeline import prune as prune_stage
    from edgeprune.pipeline.loading import load_model

    lo, hi = _parse_range(input_range)
    keras_model = load_model(model)
    result = prune_stage.prune(
        keras_model,
        rate=rate,
        criterion=criterion,
        step=step,
        round_to=round_to,
        input_range=(lo, hi),
        seed=seed,
    )
    out_path = Path(out_path)
    _check_writable(out_path)
    result.model.save(out_path)
    if plan_path is not None:
        result.plan.save(plan_path)
    if as_json:
        import json

        out.print_json(json.dumps(result.summary()))
    else:
        from edgeprune.pipeline.report_render import prune_table

        out.print(prune_table(result))
        out.print(
            f"params {result.params_before:,} -> {result.params_after:,} "
            f"({100 * (1 - result.params_after / max(result.params_before, 1)):.1f}% fewer), "
            f"{result.seconds:.2f} s; wrote {out_path}"
        )
    for note in result.notes:
        err.print(f"[yellow]note:[/yellow] {note}")


def _parse_range(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise EdgepruneError(f"--input-range {text!r} is not 'LO,HI'", "e.g. --input-range 0,1 or -1,1") from None
    if not lo < hi:
        raise EdgepruneError(f"--input-range {text!r}: LO must be below HI", "e.g. --input-range 0,1")
    return lo, hi


def _check_writable(path: Path) -> None:
    parent = path.resolve().parent
    if not parent.exists():
        raise EdgepruneError(f"output folder {parent} does not exist", "create it or choose another --out")
    import os

    if not os.access(parent, os.W_OK):
        raise EdgepruneError(f"output folder {parent} is not writable", "choose another --out")


# --------------------------------------------------------------------------- entry
def run_cli(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (used by ``main`` and by the tests)."""
    command = typer.main.get_command(app)
    try:
        rv = command.main(args=argv, prog_name="edgeprune", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        err.print("aborted")
        return 130
    except click.ClickException as exc:
        exc.show()
        return EXIT_BAD_INPUT if exc.exit_code in (1, 2) else exc.exit_code
    except EdgepruneError as exc:
        err.print(f"[bold red]error:[/bold red] {exc.message}", highlight=False, soft_wrap=True)
        if exc.hint:
            err.print(f"  [bold]fix:[/bold] {exc.hint}", highlight=False, soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    return rv if isinstance(rv, int) else 0


def main() -> None:
    sys.exit(run_cli())
