"""The ``fpntools`` console command.

Subcommands: ``info`` (versions and working backends), ``bench`` (benchmarks), and one subcommand per
application, discovered through the installed entry points of the group ``fpntools.commands`` (see
:mod:`fpntools.plugins`; the applications declare theirs in ``pyproject.toml``). ``fpntools`` never imports an
application by name: ``fpntools --help`` lists every command with its one-line help read from the source,
and only the command that is invoked is imported.
"""

from __future__ import annotations

import typer

from fpntools.plugins import PluginGroup

__all__ = ["app", "main"]


class _TopLevel(PluginGroup):
    """The top-level group: plugins of ``fpntools.commands`` (with the fallback scan); user errors end as one
    line and an exit code."""

    plugin_group = "fpntools.commands"
    plugin_fallback = True

    def invoke(self, ctx):  # type: ignore[override]
        from fpntools.cli_support import EXIT_NOT_USABLE, EXIT_USER_ERROR, NotUsableError
        from fpntools.errors import UserInputError

        try:
            return super().invoke(ctx)
        except UserInputError as exc:  # bad user input: one line on stderr, exit code 2, no traceback
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(EXIT_USER_ERROR) from None
        except NotUsableError as exc:  # computed, but the result must not be used: exit code 3
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(EXIT_NOT_USABLE) from None


app = typer.Typer(
    cls=_TopLevel,
    help="fpntools: fixed-point networks, operators and their applications (CT, traffic, games, imaging).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def info() -> None:
    """Print versions and which backends work (CUDA, ASTRA CPU/CUDA, triton, cvxpy solvers)."""
    from fpntools.backends import backend_report

    from rich.console import Console
    from rich.table import Table

    table = Table(title="fpntools environment")
    table.add_column("component")
    table.add_column("status")
    for name, status in backend_report():
        table.add_row(name, status)
    Console().print(table)


def _register_bench() -> None:
    from fpntools.bench.cli import app as bench_app

    app.add_typer(bench_app, name="bench")


_register_bench()


def main() -> None:
    """Console entry point (user errors become a one-line message and exit code 2, see ``_TopLevel``)."""
    app()
