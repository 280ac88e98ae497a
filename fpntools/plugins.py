"""Command plugins of the ``fpntools`` console command, discovered without importing them.

A plugin is a typer app (or a click command) named by an installed entry point, ``name = "module:attribute"``:

* group ``fpntools.commands``: top-level commands (``fpntools ct ...``); the applications declare theirs in
  ``pyproject.toml`` (``[project.entry-points."fpntools.commands"]``);
* group ``fpntools.bench``: benchmarks under ``fpntools bench`` (``fpntools bench zoo``).

``fpntools`` itself never imports an application: it reads the installed entry points, shows each plugin's
one-line help read from the plugin's source file (``typer.Typer(help=...)`` or the function's docstring,
found with :mod:`ast`, nothing executed), and imports the plugin only when it is invoked (or its own
``--help`` is asked for). So ``fpntools --help`` starts in a fraction of a second, without torch.

When the installed metadata has no ``fpntools.commands`` group at all (a source checkout used without
``pip install -e .``), top-level commands fall back to the packages of the ``problems`` namespace that
have a ``cli.py`` defining ``app``.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import pkgutil
from dataclasses import dataclass
from importlib.metadata import distributions
from typing import Any

import typer
from typer.core import TyperGroup

__all__ = ["Plugin", "LazyCommand", "PluginGroup", "discover", "source_file", "static_help"]

#: namespace scanned for ``<package>/cli.py`` when no entry points are installed (by name, never imported here)
FALLBACK_NAMESPACE = "problems"


@dataclass(frozen=True)
class Plugin:
    """A command named ``name`` provided by ``module:attr``."""

    name: str
    module: str
    attr: str

    def load(self) -> Any:
        """Import the module and return its command (a typer app is converted to its click command), named
        ``name``. A plugin that cannot be imported ends the program with a one-line error (exit code 1)."""
        import typer.main

        try:
            target = getattr(importlib.import_module(self.module), self.attr)
        except (ImportError, AttributeError) as exc:
            typer.echo(f"error: command {self.name!r} could not be loaded from {self.module}:{self.attr} "
                       f"({type(exc).__name__}: {exc})", err=True)
            raise typer.Exit(1) from None
        if isinstance(target, typer.Typer):
            cmd = typer.main.get_command(target)
        elif hasattr(target, "make_context") and hasattr(target, "invoke"):  # already a click command
            cmd = target
        else:  # a plain function: a one-command app
            app = typer.Typer()
            app.command()(target)
            cmd = typer.main.get_command(app)
        cmd.name = self.name
        return cmd


def discover(group: str, fallback: bool = False) -> dict[str, Plugin]:
    """Plugins of an entry-point ``group`` by name. With ``fallback`` and no entry point in the group, the
    packages of :data:`FALLBACK_NAMESPACE` that have a ``cli.py`` (as ``<name> = <ns>.<name>.cli:app``)."""
    found: dict[str, Plugin] = {}
    # every installed distribution's entry points (importlib.metadata.entry_points keeps only the first copy of
    # a distribution on sys.path, which may be a stale in-tree ``*.egg-info`` of an editable install)
    for dist in distributions():
        for ep in dist.entry_points:
            if ep.group == group and ":" in ep.value:
                found.setdefault(ep.name, Plugin(ep.name, *ep.value.split(":", 1)))
    if found or not fallback:
        return found
    for loc in _package_dirs(FALLBACK_NAMESPACE):
        for mod in pkgutil.iter_modules([loc]):
            if mod.ispkg and os.path.isfile(os.path.join(loc, mod.name, "cli.py")):
                found.setdefault(mod.name, Plugin(mod.name, f"{FALLBACK_NAMESPACE}.{mod.name}.cli", "app"))
    return found


def _package_dirs(top: str) -> list[str]:
    """Directories of the top-level package ``top`` (``find_spec`` of a top-level name imports nothing)."""
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return []
    return list(spec.submodule_search_locations or []) if spec is not None else []


def source_file(module: str) -> str | None:
    """The ``.py`` file of a dotted module name, found by walking the package directories from the top-level
    package: unlike ``importlib.util.find_spec("a.b.c")`` this does not import ``a`` and ``a.b`` (whose
    ``__init__`` may import torch)."""
    top, *rest = module.split(".")
    if not rest:
        try:
            spec = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            return None
        return spec.origin if spec is not None and spec.origin and spec.origin.endswith(".py") else None
    for loc in _package_dirs(top):
        path = os.path.join(loc, *rest[:-1])
        for candidate in (os.path.join(path, rest[-1] + ".py"), os.path.join(path, rest[-1], "__init__.py")):
            if os.path.isfile(candidate):
                return candidate
    return None


def static_help(module: str, attr: str) -> str:
    """The help of ``module:attr`` read from the source without importing ``module``: the ``help=`` of the
    ``typer.Typer(...)`` assigned to ``attr``, or the docstring of the function ``attr``, else the module
    docstring's first paragraph ("" when the source cannot be read)."""
    path = source_file(module)
    if path is None:
        return ""
    try:
        with open(path, encoding="utf-8") as fh:
            tree = ast.parse(fh.read())
    except (OSError, SyntaxError, ValueError):
        return ""
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == attr for t in targets) and isinstance(node.value, ast.Call):
                for kw in node.value.keywords:
                    if kw.arg == "help" and isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str):
                        return kw.value.value
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == attr:
            return ast.get_docstring(node) or ""
    doc = ast.get_docstring(tree) or ""
    return doc.split("\n\n", 1)[0].replace("\n", " ")


class LazyCommand(TyperGroup):
    """Stands in for a plugin in its parent's command list: name and help known without importing it; being
    invoked, asked for its help or for its subcommands loads the real command and hands over to it."""

    def __init__(self, plugin: Plugin) -> None:
        super().__init__(name=plugin.name, help=static_help(plugin.module, plugin.attr))
        self.plugin = plugin
        self._real: Any = None

    @property
    def real(self) -> Any:
        if self._real is None:
            self._real = self.plugin.load()
        return self._real

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        return self.real.make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx: Any) -> Any:
        return self.real.invoke(ctx)

    def get_help(self, ctx: Any) -> str:
        return self.real.get_help(ctx)

    def list_commands(self, ctx: Any) -> list[str]:
        real = self.real
        return real.list_commands(ctx) if hasattr(real, "list_commands") else []

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        real = self.real
        return real.get_command(ctx, cmd_name) if hasattr(real, "get_command") else None


class PluginGroup(TyperGroup):
    """A typer group whose commands are its own plus the plugins of an entry-point group, loaded lazily
    (:class:`fpntools.plugins.LazyCommand`). ``fallback``: scan the applications namespace when no entry
    point of the group is installed."""

    plugin_group: str = "fpntools.commands"
    plugin_fallback: bool = False

    def _plugins(self) -> dict[str, Plugin]:
        cached = getattr(self, "_plugin_cache", None)
        if cached is None:
            cached = self._plugin_cache = discover(self.plugin_group, fallback=self.plugin_fallback)
        return cached

    def list_commands(self, ctx):  # type: ignore[override]
        return sorted(set(super().list_commands(ctx)) | set(self._plugins()))

    def get_command(self, ctx, name):  # type: ignore[override]
        cmd = super().get_command(ctx, name)
        if cmd is not None:
            return cmd
        plugin = self._plugins().get(name)
        if plugin is None:
            return None
        lazy = self._lazy = getattr(self, "_lazy", {})
        if name not in lazy:
            lazy[name] = LazyCommand(plugin)
        return lazy[name]
