"""The ``fpntools`` console command.

Subcommands: ``info`` (versions and working backends), ``bench`` (benchmarks), and one subcommand per
application: every ``problems/<name>/cli.py`` that defines a typer ``app`` becomes ``fpntools <name>``,
so a new problem needs only its own folder. Problem CLIs are imported lazily (only the one invoked).
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import typer
from typer.core import TyperGroup

__all__ = ["app", "main"]


def _problem_names() -> list[str]:
    import problems

    names = []
    for mod in pkgutil.iter_modules(problems.__path__):
        # look for the file: find_spec("problems.x.cli") would import problems/x/__init__.py (and maybe torch)
        if mod.ispkg and (Path(mod.module_finder.path) / mod.name / "cli.py").is_file():
            names.append(mod.name)
    return sorted(names)


class _LazyGroup(TyperGroup):
    """Adds ``fpntools <problem>`` groups on demand, importing only the problem that is invoked."""

    def list_commands(self, ctx):  # type: ignore[override]
        return sorted(set(super().list_commands(ctx)) | set(_problem_names()))

    def get_command(self, ctx, name):  # type: ignore[override]
        cmd = super().get_command(ctx, name)
        if cmd is not None or name not in _problem_names():
            return cmd
        sub = importlib.import_module(f"problems.{name}.cli").app
        return typer.main.get_command(sub)

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
    cls=_LazyGroup,
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
    """Console entry point (user errors become a one-line message and exit code 2, see ``_LazyGroup``)."""
    app()
