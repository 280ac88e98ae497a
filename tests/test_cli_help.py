"""The top-level help: every command listed by name, applications discovered as plugins and imported only
when they run, and no import of ``problems`` anywhere in ``fpntools``."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

import fpntools.plugins as plugins
from fpntools.cli import app

runner = CliRunner()
APPS = ["ct", "games", "imaging", "traffic", "zoo"]
ROOT = Path(__file__).resolve().parents[1]


def _command_names(output: str) -> list[str]:
    """Names in the first column of the help's Commands panel (rows without a name are continuations)."""
    names, inside = [], False
    for line in output.splitlines():
        if "Commands" in line and line.lstrip().startswith("╭"):
            inside = True
            continue
        if inside and line.lstrip().startswith("╰"):
            break
        if inside:
            cell = line.strip().strip("│").strip()
            first = line.strip().lstrip("│")
            if first and not first.startswith("  ") and cell:
                names.append(cell.split()[0])
    return names


def test_help_lists_every_command_by_name():
    out = subprocess.run([sys.executable, "-m", "fpntools", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert _command_names(out.stdout) == sorted(["bench", "info", *APPS])
    group = typer.main.get_command(app)
    ctx = group.make_context("fpntools", [], resilient_parsing=True)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        assert cmd.name == name and (cmd.help or cmd.short_help), name


def test_help_imports_neither_torch_nor_any_application():
    code = (
        "import sys, json\n"
        "from typer.testing import CliRunner\n"
        "from fpntools.cli import app\n"
        "r = CliRunner().invoke(app, ['--help'])\n"
        "r2 = CliRunner().invoke(app, ['bench', '--help'])\n"
        "print(json.dumps([r.exit_code, r2.exit_code, 'zoo' in r2.output,"
        " sorted(m for m in sys.modules if m == 'torch' or m.split('.')[0] == 'problems')]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    code1, code2, has_zoo, loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert (code1, code2, has_zoo, loaded) == (0, 0, True, [])


def test_application_help_loads_the_plugin():
    for cmd in (["zoo", "--help"], ["bench", "zoo", "--help"], ["traffic", "equilibrium", "--help"]):
        result = runner.invoke(app, cmd)
        assert result.exit_code == 0, (cmd, result.output)
        assert "Usage" in result.output


def test_static_help_reads_the_source_without_importing():
    before = set(sys.modules)
    assert plugins.static_help("problems.zoo.bench", "app").startswith("Model zoo claims")
    assert plugins.static_help("problems.zoo.bench", "command").startswith("Model zoo claims")
    assert plugins.static_help("no.such.module", "app") == ""
    assert not {m for m in set(sys.modules) - before if m.startswith("problems")}


def test_fallback_scan_without_entry_points(monkeypatch):
    monkeypatch.setattr(plugins, "distributions", lambda: [])
    assert plugins.discover("fpntools.commands") == {}
    found = plugins.discover("fpntools.commands", fallback=True)
    assert sorted(found) == APPS and found["ct"] == plugins.Plugin("ct", "problems.ct.cli", "app")


def test_plugin_that_cannot_be_imported_is_one_line_error(monkeypatch):
    real = plugins.discover
    broken = plugins.Plugin("broken", "no_such_package.cli", "app")
    monkeypatch.setattr(plugins, "discover", lambda group, fallback=False: {**real(group, fallback), "broken": broken})
    assert "broken" in _command_names(runner.invoke(app, ["--help"]).output)
    result = runner.invoke(app, ["broken", "--help"])
    assert result.exit_code == 1
    assert "could not be loaded" in result.output and "Traceback" not in result.output


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_fpntools_never_imports_problems():
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "fpntools").rglob("*.py")
                 if any(n == "problems" or n.startswith("problems.") for n in _imports(p))]
    assert offenders == []


@pytest.mark.parametrize("group, names", [("fpntools.commands", APPS), ("fpntools.bench", ["zoo"])])
def test_pyproject_declares_the_plugins(group, names):
    import tomllib

    eps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"][group]
    assert sorted(eps) == names
    for target in eps.values():
        module, attr = target.split(":")
        assert plugins.source_file(module) is not None and plugins.static_help(module, attr)
