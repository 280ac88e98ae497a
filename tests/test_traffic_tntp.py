"""TNTP readers: round trips, real-file quirks, and clear errors (file, line, field) on malformed input."""

from __future__ import annotations

import numpy as np
import pytest

from problems.traffic.synthetic import random_demand, random_network
from problems.traffic.tntp import (
    TNTPError,
    load_known,
    read_flow,
    read_net,
    read_trips,
    tntp_dir,
    tntp_files,
    write_net,
    write_trips,
)

NET = """<NUMBER OF ZONES> 2\t\t
<NUMBER OF NODES>\t\t\t4
<FIRST THRU NODE> 3
<NUMBER OF LINKS> 4
<ORIGINAL HEADER>~ Init node Term node ... ;
<END OF METADATA>


~\tinit_node\tterm_node\tcapacity\tlength\tfree_flow_time\tb\tpower\tspeed\ttoll\tlink_type\t;
\t1\t3\t100.5\t1\t2\t0.15\t4\t0\t0\t1\t;
\t3\t2\t200\t1\t3\t0.15\t4\t0\t0\t1\t; ~ trailing comment
 \t2   \t4  \t999999.0 \t 0.0 \t 0.0 \t0.0 \t4.000000 \t0.0 \t0.0 \t0 \t;
\t4\t1\t50\t2\t1.5\t1.0E+00\t4.5\t0\t7\t2
"""

TRIPS = """<NUMBER OF ZONES> 2
<TOTAL OD FLOW> 30.5
<END OF METADATA>

~ comment line
Origin \t1
    1 :      0.0;     2 :    10.0;

Origin 2
1 \t: \t20.5; \t
"""


def _write(tmp_path, name: str, text: str):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_read_net_hand_written(tmp_path):
    net = read_net(_write(tmp_path, "toy_net.tntp", NET))
    assert (net.num_zones, net.num_nodes, net.first_thru_node, net.num_links) == (2, 4, 3, 4)
    np.testing.assert_array_equal(net.init, [0, 2, 1, 3])  # 0-based
    np.testing.assert_array_equal(net.term, [2, 1, 3, 0])
    np.testing.assert_allclose(net.capacity, [100.5, 200, 999999.0, 50])
    np.testing.assert_allclose(net.b, [0.15, 0.15, 0.0, 1.0])
    np.testing.assert_allclose(net.power, [4, 4, 4, 4.5])
    np.testing.assert_allclose(net.toll, [0, 0, 0, 7])
    np.testing.assert_array_equal(net.link_type, [1, 1, 0, 2])
    np.testing.assert_array_equal(net.through_allowed, [False, False, True, True])
    assert net.name == "toy"


def test_read_trips_hand_written(tmp_path):
    dem = read_trips(_write(tmp_path, "toy_trips.tntp", TRIPS), num_zones=2)
    np.testing.assert_allclose(dem, [[0.0, 10.0], [20.5, 0.0]])
    sparse = read_trips(tmp_path / "toy_trips.tntp", sparse=True)
    np.testing.assert_allclose(sparse.toarray(), dem)


def test_total_od_flow_mismatch_warns(tmp_path):
    p = _write(tmp_path, "t_trips.tntp", TRIPS.replace("30.5", "99"))
    with pytest.warns(UserWarning, match="TOTAL OD FLOW"):
        read_trips(p)


def test_round_trip_random_network(tmp_path):
    net = random_network(9, 4, extra_links=5, first_thru_node=3, seed=3)
    dem = random_demand(4, seed=3)
    back = read_net(write_net(net, tmp_path / "r_net.tntp"))
    for f in ("init", "term", "capacity", "length", "free_flow_time", "b", "power", "toll", "link_type"):
        np.testing.assert_array_equal(getattr(back, f), getattr(net, f), err_msg=f)
    assert (back.num_nodes, back.num_zones, back.first_thru_node) == (9, 4, 3)
    np.testing.assert_array_equal(read_trips(write_trips(dem, tmp_path / "r_trips.tntp"), 4), dem)


def test_read_flow_and_align(tmp_path):
    net = read_net(_write(tmp_path, "toy_net.tntp", NET))
    p = _write(tmp_path, "toy_flow.tntp", "From \tTo \tVolume \tCost \n4\t1\t3.5\t1.5\n1\t3\t1\t2\n3\t2\t2\t3\n"
               "2\t4\t0\t0\n")
    table = read_flow(p, net.num_nodes)
    vol, cost = table.align(net)
    np.testing.assert_allclose(vol, [1, 2, 0, 3.5])
    np.testing.assert_allclose(cost, [2, 3, 0, 1.5])


def test_to_networkx(tmp_path):
    net = read_net(_write(tmp_path, "toy_net.tntp", NET))
    g = net.to_networkx(flows=np.arange(4.0))
    assert g.number_of_nodes() == 4 and g.number_of_edges() == 4
    e = g.edges[4, 1]
    assert e["capacity"] == 50 and e["power"] == 4.5 and e["b"] == 1.0 and e["flow"] == 3.0 and e["link"] == 3
    assert g.nodes[1]["zone"] and not g.nodes[3]["zone"]
    assert g.graph["first_thru_node"] == 3


def _net_with(line_no: int, new: str) -> str:
    """NET with (1-based) line ``line_no`` replaced."""
    lines = NET.split("\n")
    lines[line_no - 1] = new
    return "\n".join(lines)


NET_ERRORS = [
    # (text, line, field substring, message substring)
    (_net_with(11, "\t1\t3\tabc\t1\t2\t0.15\t4\t0\t0\t1\t;"), 11, "capacity", "not a number"),
    (_net_with(11, "\t1\t3\t100\t1\t2\t0.15\t4\t0\t0\t;"), 11, "columns", "expected 10 columns"),
    (_net_with(11, "\t1\t3\t100\t1\t2\t0.15\t4\t0\t0\t1\t5\t;"), 11, "columns", "expected 10 columns"),
    (_net_with(12, "\t3\t9\t200\t1\t3\t0.15\t4\t0\t0\t1\t;"), 12, "term_node", "out of range 1..4"),
    (_net_with(12, "\t0\t2\t200\t1\t3\t0.15\t4\t0\t0\t1\t;"), 12, "init_node", "out of range"),
    (_net_with(12, "\t3\t2\t-200\t1\t3\t0.15\t4\t0\t0\t1\t;"), 12, "capacity", "non-negative"),
    (_net_with(12, "\t3\t2\t0\t1\t3\t0.15\t4\t0\t0\t1\t;"), 12, "capacity", "positive when b > 0"),
    (_net_with(12, "\t3\t2\t200\t1\t-3\t0.15\t4\t0\t0\t1\t;"), 12, "free_flow_time", "non-negative"),
    (_net_with(12, "\t3\t2\t200\t1\t3\t0.15\tnan\t0\t0\t1\t;"), 12, "power", "finite"),
    (_net_with(12, "\t3\t2\t200\t1\t3\t0.15\t4\t0\t0\t1\t; 7"), 12, None, "after the ';'"),
    (_net_with(2, "<NUMBER OF NODES> four"), 2, "NUMBER OF NODES", "not a number"),
    (_net_with(4, "<NUMBER OF LINKS> 5"), 4, "NUMBER OF LINKS", "says 5 but the file has 4"),
    (_net_with(1, "<NUMBER OF ZONES> 9"), 1, "NUMBER OF ZONES", "exceeds"),
    (_net_with(1, "NUMBER OF ZONES 2"), 1, None, "metadata line"),
]


@pytest.mark.parametrize("text,line,field,msg", NET_ERRORS)
def test_malformed_net(tmp_path, text, line, field, msg):
    p = _write(tmp_path, "bad_net.tntp", text)
    with pytest.raises(TNTPError) as exc:
        read_net(p)
    s = str(exc.value)
    assert str(p) in s and f"line {line}" in s and msg in s, s
    assert exc.value.line == line
    if field is not None:
        assert f"field '{field}'" in s and exc.value.field == field


def test_missing_metadata(tmp_path):
    p = _write(tmp_path, "m_net.tntp", NET.replace("<NUMBER OF LINKS> 4\n", ""))
    with pytest.raises(TNTPError, match=r"missing metadata <NUMBER OF LINKS>") as exc:
        read_net(p)
    assert exc.value.field == "NUMBER OF LINKS"
    p = _write(tmp_path, "e_net.tntp", "<NUMBER OF ZONES> 2\n<NUMBER OF NODES> 4\n")
    with pytest.raises(TNTPError, match="missing <END OF METADATA>"):
        read_net(p)


def test_missing_file(tmp_path):
    with pytest.raises(TNTPError, match="file not found"):
        read_net(tmp_path / "nope_net.tntp")


TRIP_ERRORS = [
    (TRIPS.replace("2 :    10.0;", "2 :    ten;"), 7, "demand 1->2", "not a number"),
    (TRIPS.replace("2 :    10.0;", "3 :    10.0;"), 7, "destination", "out of range 1..2"),
    (TRIPS.replace("2 :    10.0;", "2 :    -10.0;"), 7, "demand 1->2", "negative demand"),
    (TRIPS.replace("2 :    10.0;", "2     10.0;"), 7, "entry", "dest : demand"),
    (TRIPS.replace("2 :    10.0;", "1 :    10.0;"), 7, "destination", "repeated"),
    (TRIPS.replace("2 :    10.0;", "2 :    10.0"), 7, None, "not terminated"),
    (TRIPS.replace("Origin 2", "Origin 5"), 9, "Origin", "out of range"),
    (TRIPS.replace("Origin \t1", ""), 7, None, "before the first 'Origin'"),
]


@pytest.mark.parametrize("text,line,field,msg", TRIP_ERRORS)
def test_malformed_trips(tmp_path, text, line, field, msg):
    p = _write(tmp_path, "bad_trips.tntp", text)
    with pytest.raises(TNTPError) as exc:
        read_trips(p)
    s = str(exc.value)
    assert str(p) in s and f"line {line}" in s and msg in s, s
    if field is not None:
        assert exc.value.field == field


def test_trips_zone_count_mismatch(tmp_path):
    p = _write(tmp_path, "z_trips.tntp", TRIPS)
    with pytest.raises(TNTPError, match="network has 3 zones"):
        read_trips(p, num_zones=3)


def test_malformed_flow(tmp_path):
    p = _write(tmp_path, "f_flow.tntp", "From To Volume Cost\n1 2 3.0 x\n")
    with pytest.raises(TNTPError, match=r"line 2.*field 'cost'"):
        read_flow(p)


def _require(name: str):
    try:
        return tntp_files(name)
    except FileNotFoundError:
        pytest.skip(f"{name} TNTP data not available (set FPNTOOLS_TNTP_DIR)")


def test_sioux_falls_files():
    files = _require("SiouxFalls")
    net, dem = load_known("SiouxFalls")
    assert (net.num_nodes, net.num_zones, net.num_links, net.first_thru_node) == (24, 24, 76, 1)
    assert dem.shape == (24, 24) and dem.sum() == pytest.approx(360600.0) and (dem > 0).sum() == 528
    vol, _ = read_flow(files["flow"], net.num_nodes).align(net)
    assert vol.shape == (76,) and (vol > 0).all()


@pytest.mark.parametrize("name", ["Anaheim", "Winnipeg", "Berlin-Tiergarten", "Eastern-Massachusetts"])
def test_other_real_networks_parse(name):
    _require(name)
    net, dem = load_known(name)
    assert net.num_links == int(net.metadata["NUMBER OF LINKS"].split()[0])
    assert dem.shape == (net.num_zones, net.num_zones) and dem.sum() > 0
    assert net.init.max() < net.num_nodes and net.term.max() < net.num_nodes


def test_tntp_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("FPNTOOLS_TNTP_DIR", str(tmp_path))
    assert tntp_dir() == tmp_path
    with pytest.raises(FileNotFoundError):
        tntp_files("SiouxFalls")
