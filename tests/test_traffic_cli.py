"""``fpntools traffic``: torch-free start of ``equilibrium``, generalised-cost weights (warnings, networks
recognised by content), and the bad-input table of issue 14 (one-line error, exit code, no output file)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fpntools.cli import app
from problems.traffic.synthetic import random_demand, random_network
from problems.traffic.tntp import KNOWN_NETWORKS, read_net, tntp_dir, tntp_files, write_net, write_trips

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str]):
    return CliRunner().invoke(app, ["traffic", *args])


def _one_error_line(output: str) -> str:
    """The output has exactly one ``error:`` line and no traceback; returns it."""
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    return errors[0]


@pytest.fixture
def toy(tmp_path):
    """A small network whose links carry lengths (= free-flow times), no tolls; its files and demand."""
    net = random_network(8, 4, extra_links=5, seed=2)
    dem = random_demand(4, seed=2)
    return net, dem, write_net(net, tmp_path / "toy_net.tntp"), write_trips(dem, tmp_path / "toy_trips.tntp")


def _eq(net_path, trips_path, out, *extra, quiet: bool = True):
    return _run(["equilibrium", "--net", str(net_path), "--trips", str(trips_path), "--out", str(out),
                 *(["--quiet"] if quiet else []), *extra])


def _edit_link(net_path: Path, dest: Path, link: int, **values) -> Path:
    """Copy a TNTP net file with some columns of one link (0-based, file order) replaced."""
    from problems.traffic.tntp import NET_COLUMNS

    net = read_net(net_path)
    for key, v in values.items():
        assert key in NET_COLUMNS
        getattr(net, key)[link] = v
    return write_net(net, dest)


# ------------------------------------------------------------------------------------------------ start-up


def test_equilibrium_command_does_not_import_torch(toy, tmp_path):
    """The whole ``fpntools traffic equilibrium`` path (console group, traffic CLI, TNTP reader, solver, CSV
    writer) runs without importing torch."""
    _, _, net_path, trips_path = toy
    out = tmp_path / "flows.csv"
    code = (
        "import sys\n"
        "from fpntools.cli import app\n"
        "try:\n"
        f"    app(['traffic', 'equilibrium', '--net', {str(net_path)!r}, '--trips', {str(trips_path)!r},"
        f" '--out', {str(out)!r}, '--quiet'])\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "print('torch' in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:3])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("False"), r.stdout
    assert out.is_file()


# ------------------------------------------------------------------------------------------------ cost weights


def test_lengths_with_zero_distance_factor_warn(toy, tmp_path):
    net, dem, net_path, trips_path = toy
    r = _eq(net_path, trips_path, tmp_path / "a.csv")
    assert r.exit_code == 0, r.output
    assert "warning:" in r.output and "--distance-factor" in r.output and "lengths" in r.output
    assert "--toll-factor is 0" not in r.output  # no tolls on these links
    # with tolls as well, both options are named
    tolled = net.replace(toll=np.where(np.arange(net.num_links) % 2 == 0, 50.0, 0.0))
    tp = write_net(tolled, tmp_path / "tolled_net.tntp")
    r = _eq(tp, trips_path, tmp_path / "b.csv")
    assert r.exit_code == 0 and "--toll-factor is 0" in r.output and "tolls" in r.output
    # given weights: no warning, and they enter the costs (cost = BPR + 0.5 toll + 0.1 length)
    out = tmp_path / "c.csv"
    r = _eq(tp, trips_path, out, "--toll-factor", "0.5", "--distance-factor", "0.1")
    assert r.exit_code == 0 and "warning" not in r.output, r.output
    rows = np.genfromtxt(out, delimiter=",", names=True)
    from problems.traffic.costs import bpr

    t = bpr(rows["flow"], tolled.free_flow_time, tolled.b, tolled.capacity, tolled.power)
    np.testing.assert_allclose(rows["cost"], t + 0.5 * tolled.toll + 0.1 * tolled.length, rtol=1e-12)


needs_chicago = pytest.mark.skipif(tntp_dir() is None or not (tntp_dir() / "Chicago-Sketch").is_dir(),
                                   reason="Chicago-Sketch TNTP files absent")


@needs_chicago
def test_chicago_sketch_recognised_by_content(tmp_path, monkeypatch):
    """Chicago-Sketch, read from a copy under another name, gets its published weights (toll 0.02, distance
    0.04, from the dataset's README) and says so; an explicit option overrides one of them."""
    from problems.traffic.commands import load_weighted_network

    files = tntp_files("Chicago-Sketch")
    assert "Toll: 0.02" in (files["net"].parent / "README.md").read_text()
    assert "Distance: 0.04" in (files["net"].parent / "README.md").read_text()
    net_copy = shutil.copy(files["net"], tmp_path / "city_net.tntp")
    network, _ = load_weighted_network(net_copy, files["trips"], None, None)
    assert (network.toll_factor, network.distance_factor) == (0.02, 0.04)
    network, _ = load_weighted_network(net_copy, files["trips"], None, 0.0)
    assert (network.toll_factor, network.distance_factor) == (0.02, 0.0)
    # through the command: the note names the network and the weights; max-iter 0 stops after one gap check
    r = _eq(net_copy, files["trips"], tmp_path / "f.csv", "--max-iter", "0", quiet=False)
    assert "recognised Chicago-Sketch" in r.output and "--toll-factor 0.02" in r.output
    assert "--distance-factor 0.04" in r.output and "warning: " + "1" not in r.output


def test_known_fingerprints_match_the_files():
    """Every known network's stored fingerprint is that of its file (skipped for absent files)."""
    if tntp_dir() is None:
        pytest.skip("TNTP data absent")
    for name, info in KNOWN_NETWORKS.items():
        try:
            files = tntp_files(name)
        except FileNotFoundError:
            continue
        assert read_net(files["net"]).content_fingerprint() == info["fingerprint"], name


# ------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("args,needle", [
    (["--distance-factor", "-10"], "--distance-factor"),
    (["--toll-factor", "nan"], "--toll-factor"),
    (["--toll-factor", "inf"], "--toll-factor"),
    (["--toll-factor", "-1"], "--toll-factor"),
    (["--gap", "inf"], "--gap"),
    (["--gap", "nan"], "--gap"),
    (["--gap", "0"], "--gap"),
    (["--gap", "-1e-3"], "--gap"),
    (["--gap", "1"], "--gap"),
    (["--method", "newton"], "--method"),
    (["--max-iter", "-1"], "--max-iter"),
])
def test_bad_options_one_line_exit_2_no_output(toy, tmp_path, args, needle):
    _, _, net_path, trips_path = toy
    out = tmp_path / "flows.csv"
    r = _eq(net_path, trips_path, out, *args)
    assert r.exit_code == 2, r.output
    assert needle in _one_error_line(r.output)
    assert not out.exists()


@pytest.mark.parametrize("values,needle", [
    (dict(power=100.0, capacity=1.0), "overflows"),  # (demand / 1)^101 is not a float64
    (dict(capacity=1e-300), "overflows"),
])
def test_link_whose_cost_overflows_is_named(toy, tmp_path, values, needle):
    net, _, net_path, trips_path = toy
    bad = _edit_link(net_path, tmp_path / "bad_net.tntp", 3, **values)
    out = tmp_path / "flows.csv"
    r = _eq(bad, trips_path, out)
    assert r.exit_code == 2, r.output
    line = _one_error_line(r.output)
    assert needle in line and f"link 4 ({net.init[3] + 1}->{net.term[3] + 1})" in line
    assert not out.exists()


def test_large_power_that_stays_representable_solves_with_a_warning(toy, tmp_path):
    """Power 100 on a link of ample capacity: the ratio form keeps the cost finite, the solve is certified and
    the unusual power is reported (the old ``t0 b / c^p`` form underflowed to 0 and gave NaN)."""
    from problems.traffic.equilibrium import relative_gap

    net, dem, net_path, trips_path = toy
    bad = _edit_link(net_path, tmp_path / "p100_net.tntp", 3, power=100.0)
    out = tmp_path / "flows.csv"
    r = _eq(bad, trips_path, out, "--gap", "1e-8", "--distance-factor", "0")
    assert r.exit_code == 0, r.output
    assert "unusual BPR power" in r.output and "link 4" in r.output
    flows = np.genfromtxt(out, delimiter=",", names=True)["flow"]
    assert np.isfinite(flows).all()
    assert relative_gap(read_net(bad), dem, flows) <= 1e-8


@pytest.mark.filterwarnings("ignore:overflow encountered")
def test_nonfinite_solve_is_not_usable(toy, tmp_path, monkeypatch):
    """If a solve becomes NaN / inf (here: the range check switched off for a capacity of 1e-300), the command
    exits 3 and writes nothing."""
    from problems.traffic.costs import BPRCost

    from problems.traffic.tntp import Network

    monkeypatch.setattr(BPRCost, "check_range", lambda self, *a, **k: None)
    # two zones joined by one link each way; all trips 1 -> 2 must use the link of capacity 1e-300
    one = np.ones(2)
    net = Network(init=np.array([0, 1]), term=np.array([1, 0]), capacity=np.array([1e-300, 100.0]), length=one,
                  free_flow_time=one, b=0.15 * one, power=4 * one, speed=0 * one, toll=0 * one,
                  link_type=np.ones(2, int), num_nodes=2, num_zones=2)
    bad = write_net(net, tmp_path / "bridge_net.tntp")
    trips_path = write_trips(np.array([[0.0, 10.0], [0.0, 0.0]]), tmp_path / "bridge_trips.tntp")
    out = tmp_path / "flows.csv"
    r = _eq(bad, trips_path, out)
    assert r.exit_code == 3, r.output
    assert "non-finite" in _one_error_line(r.output) and not out.exists()


def test_bad_out_path_refused_before_computing(toy, tmp_path, monkeypatch):
    import problems.traffic.equilibrium as eq

    def boom(*a, **k):
        raise AssertionError("solved although --out is bad")

    monkeypatch.setattr(eq, "solve_equilibrium", boom)
    _, _, net_path, trips_path = toy
    r = _eq(net_path, trips_path, tmp_path)
    assert r.exit_code == 2 and "is a directory" in _one_error_line(r.output)
    r = _eq(net_path, trips_path, tmp_path / "missing" / "f.csv")
    assert r.exit_code == 2 and "does not exist" in _one_error_line(r.output)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):
            return  # running as root: permissions are not enforced
        r = _eq(net_path, trips_path, ro / "f.csv")
        assert r.exit_code == 2 and "not writable" in _one_error_line(r.output)
    finally:
        ro.chmod(0o755)


def test_dataset_bad_input(toy, tmp_path):
    _, _, net_path, trips_path = toy
    out = tmp_path / "d.npz"
    base = ["dataset", "--net", str(net_path), "--trips", str(trips_path), "--out", str(out), "--quiet"]
    for args, needle in ((["--gap", "inf"], "--gap"), (["--n", "0"], "--n"),
                         (["--distance-factor", "nan"], "--distance-factor")):
        r = _run(base + args)
        assert r.exit_code == 2 and needle in _one_error_line(r.output), r.output
        assert not out.exists()
    r = _run(["dataset", "--net", str(net_path), "--trips", str(trips_path), "--out", str(tmp_path), "-q"])
    assert r.exit_code == 2 and "is a directory" in _one_error_line(r.output)


# ------------------------------------------------------------------------------------------------ N-FPN commands

needs_model = pytest.mark.skipif(
    tntp_dir() is None or not (tntp_dir() / "SiouxFalls").is_dir()
    or not (ROOT / "data" / "traffic" / "siouxfalls_nfpn.safetensors").is_file(),
    reason="Sioux Falls TNTP files or the shipped model absent")


def _shipped_copy(tmp_path: Path, name: str = "m") -> Path:
    from problems.traffic.train import DEFAULT_MODEL

    for suffix in (".json", ".safetensors"):
        shutil.copy(DEFAULT_MODEL.with_suffix(suffix), (tmp_path / name).with_suffix(suffix))
    return tmp_path / name


@needs_model
@pytest.mark.parametrize("edit,needle", [
    (lambda meta: meta.update(hidden_channels=64), "unknown N-FPN config keys: hidden_channels"),
    (lambda meta: meta.update(solver="newton"), "solver must be one of"),
    (lambda meta: meta.update(step_scale=-1.0), "step_scale"),
    (lambda meta: meta.update(network="Anaheim"), "does not match"),
])
def test_predict_weights_whose_config_does_not_fit(tmp_path, edit, needle):
    prefix = _shipped_copy(tmp_path)
    meta = json.loads(prefix.with_suffix(".json").read_text())
    edit(meta)
    prefix.with_suffix(".json").write_text(json.dumps(meta))
    out = tmp_path / "flows.csv"
    r = _run(["predict", "--model", str(prefix), "--context", "0.1,0.2,0.3", "--out", str(out)])
    assert r.exit_code == 2, r.output
    assert needle in _one_error_line(r.output) and not out.exists()


@needs_model
def test_predict_weights_of_another_shape(tmp_path):
    import torch
    from safetensors.torch import load, save

    prefix = _shipped_copy(tmp_path)
    st = prefix.with_suffix(".safetensors")
    tensors = load(st.read_bytes())
    tensors["theta_c"] = torch.zeros(10, 1, dtype=torch.float64)
    st.write_bytes(save(tensors))
    out = tmp_path / "flows.csv"
    r = _run(["predict", "--model", str(prefix), "--context", "0.1,0.2,0.3", "--out", str(out)])
    assert r.exit_code == 2 and "theta_c" in _one_error_line(r.output) and not out.exists()


@needs_model
def test_predict_unconverged_fixed_point_is_not_usable(tmp_path):
    """Without the warm start, 5 DY steps leave a large residual: exit 3, nothing written."""
    prefix = _shipped_copy(tmp_path)
    meta = json.loads(prefix.with_suffix(".json").read_text())
    meta.update(warm="zero", max_iter=5)
    prefix.with_suffix(".json").write_text(json.dumps(meta))
    out = tmp_path / "flows.csv"
    r = _run(["predict", "--model", str(prefix), "--context", "0.1,0.2,0.3", "--out", str(out)])
    assert r.exit_code == 3, r.output
    assert "not usable" in _one_error_line(r.output) and not out.exists()
    r = _run(["predict", "--context", "0.1,0.2,0.3", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "is a directory" in _one_error_line(r.output)


@needs_model
def test_predict_says_output_is_usable(tmp_path):
    out = tmp_path / "flows.csv"
    r = _run(["predict", "--context", "0.3,0.6,0.5,10", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "output usable" in r.output and out.is_file()


def test_train_refusals_before_computing(tmp_path, monkeypatch):
    import problems.traffic.train as tr

    def boom(*a, **k):
        raise AssertionError("data loaded although the options are bad")

    monkeypatch.setattr(tr, "load_data", boom)
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"x")
    r = _run(["train", "--out", str(run), "-q"])
    assert r.exit_code == 2 and "--resume" in _one_error_line(r.output) and "--force" in r.output
    for args, needle in ((["--epochs", "0"], "epochs"), (["--lr", "nan"], "lr"), (["--backward", "unroll"], "backward"),
                         (["--gap", "inf"], "gap")):
        r = _run(["train", "--out", str(tmp_path / "new"), "-q", *args])
        assert r.exit_code == 2 and needle in _one_error_line(r.output), r.output
    (tmp_path / "file.txt").write_text("")
    r = _run(["train", "--out", str(tmp_path / "file.txt"), "-q"])
    assert r.exit_code == 2 and "is a file" in _one_error_line(r.output)
    import torch

    if not torch.cuda.is_available():
        r = _run(["train", "--out", str(tmp_path / "new"), "--device", "cuda", "-q"])
        assert r.exit_code == 2 and "CUDA is not available" in _one_error_line(r.output)


def test_bench_bad_input():
    r = _run(["bench", "--networks", "SiouxFalls", "--gap", "inf", "-q"])
    assert r.exit_code == 2 and "--gap" in _one_error_line(r.output)
    r = _run(["bench", "--networks", " , ", "-q"])
    assert r.exit_code == 2 and "--networks" in _one_error_line(r.output)
