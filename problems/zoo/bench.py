"""``fpntools bench zoo``: the model-zoo claims, measured and printed as tables.

The command is a plugin of ``fpntools bench`` (entry point ``zoo = "problems.zoo.bench:app"`` in the group
``fpntools.bench``); :func:`run` computes and prints the tables.

Sections (``--sections``, comma separated):

* ``memory``: peak memory of one training step of a DEQ layer (solver buffers included) vs the same
  weight-tied layer unrolled to the same number of iterations (:mod:`problems.zoo.memory`).
* ``jfb``: FPN classifiers on digits (MLP and convolutional), JFB vs implicit backward at forward
  tolerances 1e-4 and 1e-3, the
  adjoint solved by Anderson (``"implicit"``) and by CG on the normal equations (``"implicit_cg"``, the JFB
  paper's Jacobian-based baseline): accuracy, time per epoch and per step, forward and backward pass of a
  step timed separately, implicit / JFB ratios.
* ``jacobian``: Jacobian regularisation on digits and on the 1-D synthetic regression: forward solver
  steps to reach the tolerance and ``||J_f(z*)||_F`` at initialisation and after training, accuracy / MSE.
* ``compare``: SIM (both variants), DEQ and MDEQ on digits at about equal parameter counts (20 epochs,
  learning rates tuned on a validation split).
* ``lm``: DEQ-Transformer (with and without the Jacobian penalty) / DEQ-TrellisNet vs an explicit weight-tied transformer of the same size on a
  character-level corpus (CPython reference topics): perplexity, time, activation memory.

The experiments live in :mod:`problems.zoo.memory` and :mod:`problems.zoo.tasks`.
"""

from __future__ import annotations

import time
from typing import Sequence

import torch
import typer

from fpntools.errors import UserInputError

__all__ = ["app", "run", "SECTIONS"]

SECTIONS = ("memory", "jfb", "jacobian", "compare", "lm")


def _table(title: str, rows, first: str = "model"):
    from rich.table import Table

    t = Table(title=title)
    t.add_column(first, justify="left")
    cols: list[str] = []
    for r in rows:
        for k in r.values:
            if k not in cols:
                cols.append(k)
    for c in cols:
        t.add_column(c, justify="right")
    for r in rows:
        t.add_row(r.name, *[_fmt(r.values.get(c, "")) for c in cols])
    return t


def _fmt(v) -> str:
    if isinstance(v, float):
        if v != v:
            return "-"
        return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.0f}"
    return str(v)


def run(sections: Sequence[str] = SECTIONS, quick: bool = False, device: str = "cpu", epochs: int | None = None,
        lm_steps: int | None = None, seed: int = 0) -> dict[str, list]:
    """Run the chosen sections, print one table each and return the rows by section.

    ``quick`` shrinks every experiment (a smoke run; the numbers are then not meaningful).
    """
    from rich.console import Console

    from problems.zoo import memory, tasks

    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise UserInputError(f"unknown sections {unknown}; choose from {list(SECTIONS)}")
    con = Console(width=200)
    ep = epochs if epochs is not None else (1 if quick else 10)
    out: dict[str, list] = {}
    con.print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, seed {seed}")
    for s in sections:
        t0 = time.perf_counter()
        if s == "memory":
            depths = (2, 5) if quick else (5, 10, 20, 30, 50)
            rows = memory.measure_memory(depths=depths, device=device)
            from problems.zoo.tasks import Row

            trows = [Row(f"{r.layer}", {"depth / iters": r.depth, "explicit peak MB": r.explicit_mb,
                                         "DEQ peak MB": r.deq_mb, "reduction %": 100 * r.reduction,
                                         "DEQ state copies": r.deq_copies, "explicit ms": r.explicit_ms,
                                         "DEQ ms": r.deq_ms}) for r in rows]
            kind = memory.METHOD_CUDA if device.startswith("cuda") else memory.METHOD_CPU
            con.print(_table(f"Training memory (peak above the inputs, {kind}), batch 8: DEQ vs explicit "
                             "weight-tied unrolling", trows, "layer"))
            out[s] = rows
            rows = trows
        elif s == "jfb":
            rows = tasks.jfb_vs_implicit(epochs=ep, seed=seed)
            con.print(_table(f"FPN (MLP) on digits, {ep} epochs: JFB vs implicit backward, adjoint by Anderson "
                             "(implicit) or by CG on the normal equations (implicit_cg) (ms: median fwd / bwd of a "
                             "step)", rows))
            crows = tasks.jfb_vs_implicit(epochs=ep, seed=seed, arch="conv", width=4 if quick else None,
                                          tols=(1e-3,) if quick else (1e-4, 1e-3))
            con.print(_table(f"Convolutional FPN on digits, {ep} epochs: JFB vs implicit backward (as above)", crows))
            rows = rows + crows
        elif s == "jacobian":
            rows = tasks.jacobian_regularization(epochs=ep, seed=seed)
            con.print(_table(f"Jacobian regularisation, DEQ-MLP on digits, {ep} epochs", rows, "run"))
            rows1 = tasks.synthetic_1d(epochs=max(1, 3 * ep), seed=seed)
            con.print(_table(f"Jacobian regularisation, 1-D synthetic regression, {max(1, 3 * ep)} epochs", rows1, "run"))
            rows = rows + rows1
        elif s == "compare":
            cep = epochs if epochs is not None else (1 if quick else 20)
            rows = tasks.equal_parameter_comparison(epochs=cep, seed=seed, budget=8_000 if quick else 20_000)
            con.print(_table(f"Digits at equal parameter count, {cep} epochs (tuned lr, cosine schedule)", rows))
        elif s == "lm":
            steps = lm_steps if lm_steps is not None else (5 if quick else 200)
            rows = tasks.char_lm(steps=steps, seed=seed, max_chars=20_000 if quick else 200_000)
            con.print(_table(f"Character-level LM (CPython docs topics), {steps} steps, batch 16 x 64 chars", rows))
        out.setdefault(s, rows)
        con.print(f"[dim]{s}: {time.perf_counter() - t0:.0f} s[/dim]")
    return out


app = typer.Typer(help="Model zoo claims: DEQ memory vs depth, JFB vs implicit, Jacobian regularisation, SIM/DEQ/MDEQ, char-LM.")


@app.command("zoo")
def command(
    sections: str = typer.Option(",".join(SECTIONS), help="comma-separated sections to run"),
    quick: bool = typer.Option(False, help="tiny smoke run (numbers not meaningful)"),
    epochs: int = typer.Option(None, help="training epochs for the digits experiments (default 10)"),
    lm_steps: int = typer.Option(None, help="training steps of the character-level LM (default 200)"),
    device: str = typer.Option("cpu", help="cpu or cuda (memory section: peak CUDA memory)"),
    seed: int = typer.Option(0, help="random seed"),
) -> None:
    """Model zoo claims: DEQ memory vs depth, JFB vs implicit, Jacobian regularisation, SIM/DEQ/MDEQ, char-LM."""
    run(sections=[s.strip() for s in sections.split(",") if s.strip()], quick=quick, device=device, epochs=epochs,
        lm_steps=lm_steps, seed=seed)
