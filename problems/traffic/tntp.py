"""Readers for the TNTP traffic-assignment formats (``*_net.tntp``, ``*_trips.tntp``, ``*_flow.tntp``).

The TNTP format (Bar-Gera's transportation network test problems) is line based:

* a metadata header of ``<KEY> value`` lines closed by ``<END OF METADATA>``;
* ``~`` starts a comment (to the end of the line); blank lines are ignored;
* network files list one link per line, ten whitespace separated columns ended by ``;``::

      init_node term_node capacity length free_flow_time b power speed toll link_type ;

* trip files are blocks ``Origin o`` followed by ``dest : demand;`` entries (several per line);
* flow files (best-known solutions) have a ``From To Volume Cost`` header and four columns per line.

Node numbers in the files are 1-based; the arrays of :class:`Network` are **0-based** (node ``k`` of the
file is index ``k - 1``).  Zones are the nodes ``1 .. NUMBER OF ZONES`` of the file.  Nodes whose file number
is below ``<FIRST THRU NODE>`` are zones that may start or end a trip but may not be passed through.

Every malformed input raises :class:`TNTPError`, which names the file, the line number and the field.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import scipy.sparse as sp

__all__ = [
    "TNTPError",
    "Network",
    "FlowTable",
    "read_net",
    "read_trips",
    "read_flow",
    "load_network",
    "load_known",
    "tntp_dir",
    "tntp_files",
    "KNOWN_NETWORKS",
    "CostWeights",
    "identify_network",
    "resolve_cost_weights",
    "unusual_links",
    "write_net",
    "write_trips",
]

NET_COLUMNS = (
    "init_node",
    "term_node",
    "capacity",
    "length",
    "free_flow_time",
    "b",
    "power",
    "speed",
    "toll",
    "link_type",
)

_META_RE = re.compile(r"^<([^>]*)>(.*)$")


class TNTPError(ValueError):
    """A malformed TNTP file; the message names the file, line number and field."""

    def __init__(self, message: str, path: str | os.PathLike | None = None, line: int | None = None,
                 field: str | None = None) -> None:
        self.path = None if path is None else str(path)
        self.line = line
        self.field = field
        where = []
        if self.path is not None:
            where.append(self.path)
        if line is not None:
            where.append(f"line {line}")
        if field is not None:
            where.append(f"field '{field}'")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


@dataclass
class Network:
    """A road network with BPR link costs ``t_a(x) = t0_a (1 + b_a (x / c_a)^p_a)``.

    Arrays have one entry per link, in file order.  ``init`` / ``term`` are 0-based node indices.

    Attributes:
        init, term: tail and head node of each link (0-based, ``int64``).
        capacity: ``c_a``; length: ``l_a``; free_flow_time: ``t0_a``; b: ``b_a``; power: ``p_a``;
        speed, toll: as given in the file; link_type: integer type code.
        num_nodes, num_zones: counts from the metadata.
        first_thru_node: the metadata value (1-based, as in the file): nodes with file number below it may
            not be passed through.
        name: a label (file stem by default).
        toll_factor, distance_factor: weights of a generalised cost
            ``t_a(x) + toll_factor * toll_a + distance_factor * l_a`` (0 by default; Chicago-Sketch's
            published solution uses ``toll_factor=0.02, distance_factor=0.04``).
    """

    init: np.ndarray
    term: np.ndarray
    capacity: np.ndarray
    length: np.ndarray
    free_flow_time: np.ndarray
    b: np.ndarray
    power: np.ndarray
    speed: np.ndarray
    toll: np.ndarray
    link_type: np.ndarray
    num_nodes: int
    num_zones: int
    first_thru_node: int = 1
    name: str = "network"
    toll_factor: float = 0.0
    distance_factor: float = 0.0
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def num_links(self) -> int:
        return int(self.init.shape[0])

    @property
    def through_allowed(self) -> np.ndarray:
        """Boolean mask over nodes (0-based): may a path pass through this node?"""
        mask = np.ones(self.num_nodes, dtype=bool)
        mask[: max(0, min(self.num_nodes, self.first_thru_node - 1))] = False
        return mask

    @property
    def fixed_cost(self) -> np.ndarray:
        """Flow-independent part of the generalised cost: ``toll_factor * toll + distance_factor * length``."""
        return self.toll_factor * self.toll + self.distance_factor * self.length

    def link_label(self, a: int) -> str:
        """``"link 5 (3->7)"``: the 1-based link number (line order of the file) and its end nodes."""
        return f"link {a + 1} ({int(self.init[a]) + 1}->{int(self.term[a]) + 1})"

    def content_fingerprint(self) -> str:
        """A hash of the link table as read (topology, capacity, length, free-flow time, b, power, toll) and
        the zone / node counts; independent of file formatting, name and generalised-cost weights."""
        h = hashlib.sha256()
        for a in (self.init, self.term, self.capacity, self.length, self.free_flow_time, self.b, self.power,
                  self.toll):
            h.update(np.ascontiguousarray(a, dtype=np.float64).tobytes())
        h.update(repr((self.num_nodes, self.num_zones, self.first_thru_node)).encode())
        return h.hexdigest()[:16]

    def link_index(self) -> dict[tuple[int, int], int]:
        """Map ``(init, term)`` (0-based) to the first link index with these end nodes."""
        out: dict[tuple[int, int], int] = {}
        for k, (i, j) in enumerate(zip(self.init.tolist(), self.term.tolist())):
            out.setdefault((i, j), k)
        return out

    def replace(self, **changes) -> "Network":
        """A copy with some fields replaced (arrays are copied)."""
        kw = {f: getattr(self, f) for f in self.__dataclass_fields__}
        kw = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
        kw["metadata"] = dict(self.metadata)
        kw.update(changes)
        return Network(**kw)

    def to_networkx(self, flows: np.ndarray | None = None):
        """A ``networkx.DiGraph`` with 1-based node labels and BPR attributes on each edge.

        Edge attributes: ``link`` (index), ``capacity``, ``length``, ``free_flow_time``, ``b``, ``power``,
        ``toll``, ``link_type`` and, when ``flows`` is given, ``flow``.  Parallel links are not representable in
        a ``DiGraph``: a ``ValueError`` is raised if the network has any.
        """
        import networkx as nx

        g = nx.DiGraph(name=self.name, num_zones=self.num_zones, first_thru_node=self.first_thru_node)
        g.add_nodes_from(range(1, self.num_nodes + 1))
        for n in range(1, self.num_nodes + 1):
            g.nodes[n]["zone"] = n <= self.num_zones
        for k in range(self.num_links):
            u, v = int(self.init[k]) + 1, int(self.term[k]) + 1
            if g.has_edge(u, v):
                raise ValueError(f"parallel links {u}->{v}: not representable in a networkx.DiGraph")
            attrs = dict(
                link=k,
                capacity=float(self.capacity[k]),
                length=float(self.length[k]),
                free_flow_time=float(self.free_flow_time[k]),
                b=float(self.b[k]),
                power=float(self.power[k]),
                toll=float(self.toll[k]),
                link_type=int(self.link_type[k]),
            )
            if flows is not None:
                attrs["flow"] = float(flows[k])
            g.add_edge(u, v, **attrs)
        return g


@dataclass
class FlowTable:
    """Link flows of a ``*_flow.tntp`` file: 0-based ``init``, ``term``, ``volume`` and ``cost`` per line."""

    init: np.ndarray
    term: np.ndarray
    volume: np.ndarray
    cost: np.ndarray

    def align(self, network: Network) -> tuple[np.ndarray, np.ndarray]:
        """``(volume, cost)`` reordered to the link order of ``network`` (raises if a link is missing)."""
        index = {(int(i), int(j)): k for k, (i, j) in enumerate(zip(self.init, self.term))}
        order = np.empty(network.num_links, dtype=np.int64)
        for k, (i, j) in enumerate(zip(network.init.tolist(), network.term.tolist())):
            if (i, j) not in index:
                raise ValueError(f"flow table has no link {i + 1}->{j + 1}")
            order[k] = index[(i, j)]
        return self.volume[order], self.cost[order]


# ----------------------------------------------------------------------------------------------- helpers


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` with comments (``~`` to end of line) removed and blank lines skipped."""
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as fh:
            for no, raw in enumerate(fh, start=1):
                text = raw.split("~", 1)[0].strip()
                if text:
                    yield no, text
    except FileNotFoundError:
        raise TNTPError("file not found", path) from None
    except IsADirectoryError:
        raise TNTPError("is a directory, expected a file", path) from None
    except OSError as e:  # pragma: no cover - permissions and the like
        raise TNTPError(f"cannot read file ({e.strerror})", path) from None


def _read_metadata(path: Path, lines: Iterator[tuple[int, str]]) -> dict[str, tuple[int, str]]:
    """Consume the metadata header; return ``{KEY: (line, value)}``."""
    meta: dict[str, tuple[int, str]] = {}
    for no, text in lines:
        m = _META_RE.match(text)
        if m is None:
            raise TNTPError(f"expected a '<KEY> value' metadata line or <END OF METADATA>, got {text[:40]!r}",
                            path, no)
        key = m.group(1).strip().upper()
        if key == "END OF METADATA":
            return meta
        meta[key] = (no, m.group(2).strip())
    raise TNTPError("missing <END OF METADATA>", path, None, "metadata")


def _meta_int(path: Path, meta: dict[str, tuple[int, str]], key: str, default: int | None = None,
              minimum: int = 0) -> int:
    if key not in meta:
        if default is not None:
            return default
        raise TNTPError(f"missing metadata <{key}>", path, None, key)
    no, value = meta[key]
    value = value.split()[0] if value.split() else ""
    try:
        f = float(value)
    except ValueError:
        raise TNTPError(f"metadata <{key}> is not a number: {value!r}", path, no, key) from None
    if not np.isfinite(f) or f != int(f) or f < minimum:
        raise TNTPError(f"metadata <{key}> must be an integer >= {minimum}, got {value!r}", path, no, key)
    return int(f)


def _number(path: Path, no: int, name: str, token: str) -> float:
    try:
        v = float(token)
    except ValueError:
        raise TNTPError(f"not a number: {token!r}", path, no, name) from None
    if not np.isfinite(v):
        raise TNTPError(f"not a finite number: {token!r}", path, no, name)
    return v


def _node(path: Path, no: int, name: str, token: str, upper: int, what: str = "node") -> int:
    v = _number(path, no, name, token)
    if v != int(v):
        raise TNTPError(f"{what} number must be an integer, got {token!r}", path, no, name)
    if not 1 <= v <= upper:
        raise TNTPError(f"{what} {int(v)} out of range 1..{upper}", path, no, name)
    return int(v)


# ----------------------------------------------------------------------------------------------- readers


def read_net(path: str | os.PathLike, *, toll_factor: float = 0.0, distance_factor: float = 0.0) -> Network:
    """Read a ``*_net.tntp`` network file.

    Required metadata: ``<NUMBER OF ZONES>``, ``<NUMBER OF NODES>``, ``<NUMBER OF LINKS>`` and
    ``<END OF METADATA>``; ``<FIRST THRU NODE>`` defaults to 1.  Each link line has the ten columns of
    :data:`NET_COLUMNS` (a trailing ``;`` is optional).  Checks: numbers parse and are finite, node numbers are
    in ``1..NUMBER OF NODES``, capacity, length, free-flow time, b and power are non-negative, capacity is
    positive where ``b > 0``, and the number of links matches the metadata.
    """
    for name, v in (("toll_factor", toll_factor), ("distance_factor", distance_factor)):
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {v}")
    path = Path(path)
    lines = _lines(path)
    meta = _read_metadata(path, lines)
    num_zones = _meta_int(path, meta, "NUMBER OF ZONES")
    num_nodes = _meta_int(path, meta, "NUMBER OF NODES", minimum=1)
    num_links = _meta_int(path, meta, "NUMBER OF LINKS")
    first_thru = _meta_int(path, meta, "FIRST THRU NODE", default=1, minimum=1)
    if num_zones > num_nodes:
        raise TNTPError(f"<NUMBER OF ZONES> {num_zones} exceeds <NUMBER OF NODES> {num_nodes}", path,
                        meta["NUMBER OF ZONES"][0], "NUMBER OF ZONES")

    rows: list[list[float]] = []
    last_line = 0
    for no, text in lines:
        last_line = no
        tokens = text.replace(";", " ; ").split()
        if ";" in tokens:
            cut = tokens.index(";")
            if any(t != ";" for t in tokens[cut:]):
                raise TNTPError("text after the ';' terminator", path, no)
            tokens = tokens[:cut]
        if len(tokens) != len(NET_COLUMNS):
            raise TNTPError(f"expected {len(NET_COLUMNS)} columns ({' '.join(NET_COLUMNS)}), got {len(tokens)}",
                            path, no, "columns")
        row = [
            float(_node(path, no, "init_node", tokens[0], num_nodes)),
            float(_node(path, no, "term_node", tokens[1], num_nodes)),
        ]
        for name, tok in zip(NET_COLUMNS[2:], tokens[2:]):
            row.append(_number(path, no, name, tok))
        cap, length, fft, b, power = row[2], row[3], row[4], row[5], row[6]
        for name, val in (("capacity", cap), ("length", length), ("free_flow_time", fft), ("b", b),
                          ("power", power)):
            if val < 0:
                raise TNTPError(f"{name} must be non-negative, got {val:g}", path, no, name)
        if cap == 0 and b > 0:
            raise TNTPError("capacity must be positive when b > 0", path, no, "capacity")
        if row[9] != int(row[9]):
            raise TNTPError(f"link_type must be an integer, got {tokens[9]!r}", path, no, "link_type")
        rows.append(row)
    if len(rows) != num_links:
        raise TNTPError(f"<NUMBER OF LINKS> says {num_links} but the file has {len(rows)} link lines", path,
                        meta.get("NUMBER OF LINKS", (last_line,))[0], "NUMBER OF LINKS")
    arr = np.asarray(rows, dtype=np.float64).reshape(-1, len(NET_COLUMNS))
    return Network(
        init=arr[:, 0].astype(np.int64) - 1,
        term=arr[:, 1].astype(np.int64) - 1,
        capacity=arr[:, 2].copy(),
        length=arr[:, 3].copy(),
        free_flow_time=arr[:, 4].copy(),
        b=arr[:, 5].copy(),
        power=arr[:, 6].copy(),
        speed=arr[:, 7].copy(),
        toll=arr[:, 8].copy(),
        link_type=arr[:, 9].astype(np.int64),
        num_nodes=num_nodes,
        num_zones=num_zones,
        first_thru_node=first_thru,
        name=path.name.replace("_net.tntp", "").replace(".tntp", ""),
        toll_factor=float(toll_factor),
        distance_factor=float(distance_factor),
        metadata={k: v for k, (_, v) in meta.items()},
    )


def read_trips(path: str | os.PathLike, num_zones: int | None = None, *, sparse: bool = False,
               total_rtol: float = 1e-3) -> np.ndarray | sp.csr_matrix:
    """Read a ``*_trips.tntp`` file into an OD matrix ``D[o, d]`` (0-based zones, ``float64``).

    ``num_zones`` (e.g. ``network.num_zones``) must agree with ``<NUMBER OF ZONES>`` when given.  Checks:
    entries appear after an ``Origin`` line, are ``dest : demand`` pairs ended by ``;``, zones are in range,
    demands are finite and non-negative, and a destination is not repeated within an origin block.  A
    ``<TOTAL OD FLOW>`` that differs from the sum by more than ``total_rtol`` gives a warning.
    Returns a dense ``(Z, Z)`` array, or a ``scipy.sparse.csr_matrix`` when ``sparse=True``.
    """
    path = Path(path)
    lines = _lines(path)
    meta = _read_metadata(path, lines)
    zones = _meta_int(path, meta, "NUMBER OF ZONES", minimum=1)
    if num_zones is not None and num_zones != zones:
        raise TNTPError(f"<NUMBER OF ZONES> is {zones} but the network has {num_zones} zones", path,
                        meta["NUMBER OF ZONES"][0], "NUMBER OF ZONES")
    origins: list[int] = []
    dests: list[int] = []
    values: list[float] = []
    origin: int | None = None
    seen: set[int] = set()
    for no, text in lines:
        if text[:6].lower() == "origin":
            parts = text.split()
            if len(parts) != 2:
                raise TNTPError(f"expected 'Origin <zone>', got {text[:40]!r}", path, no, "Origin")
            origin = _node(path, no, "Origin", parts[1], zones, "zone")
            seen = set()
            continue
        if origin is None:
            raise TNTPError("demand entries before the first 'Origin' line", path, no)
        chunks = text.split(";")
        if chunks[-1].strip():
            raise TNTPError(f"entry {chunks[-1].strip()!r} is not terminated by ';'", path, no)
        for chunk in chunks[:-1]:
            chunk = chunk.strip()
            if not chunk:
                continue
            pair = chunk.split(":")
            if len(pair) != 2:
                raise TNTPError(f"expected 'dest : demand', got {chunk!r}", path, no, "entry")
            d = _node(path, no, "destination", pair[0].strip(), zones, "zone")
            v = _number(path, no, f"demand {origin}->{d}", pair[1].strip())
            if v < 0:
                raise TNTPError(f"negative demand {v:g}", path, no, f"demand {origin}->{d}")
            if d in seen:
                raise TNTPError(f"destination {d} repeated for origin {origin}", path, no, "destination")
            seen.add(d)
            origins.append(origin - 1)
            dests.append(d - 1)
            values.append(v)
    mat = sp.csr_matrix((np.asarray(values, dtype=np.float64), (np.asarray(origins, dtype=np.int64),
                        np.asarray(dests, dtype=np.int64))), shape=(zones, zones))
    if "TOTAL OD FLOW" in meta:
        no, raw = meta["TOTAL OD FLOW"]
        tok = raw.split()[0] if raw.split() else ""
        total = _number(path, no, "TOTAL OD FLOW", tok)
        s = float(mat.sum())
        if abs(s - total) > total_rtol * max(abs(total), 1.0):
            warnings.warn(f"{path}: <TOTAL OD FLOW> {total:g} differs from the sum of the entries {s:g}",
                          stacklevel=2)
    return mat if sparse else mat.toarray()


def read_flow(path: str | os.PathLike, num_nodes: int | None = None) -> FlowTable:
    """Read a ``*_flow.tntp`` solution file (header ``From To Volume Cost``, then four columns per line)."""
    path = Path(path)
    rows: list[tuple[int, int, float, float]] = []
    names = ("from", "to", "volume", "cost")
    for no, text in _lines(path):
        tokens = text.replace(";", " ").split()
        if tokens and tokens[0].lower() == "from":
            continue
        if len(tokens) != 4:
            raise TNTPError(f"expected 4 columns (from to volume cost), got {len(tokens)}", path, no, "columns")
        upper = num_nodes if num_nodes is not None else 2**62
        i = _node(path, no, "from", tokens[0], upper)
        j = _node(path, no, "to", tokens[1], upper)
        vol = _number(path, no, names[2], tokens[2])
        cost = _number(path, no, names[3], tokens[3])
        rows.append((i - 1, j - 1, vol, cost))
    if not rows:
        raise TNTPError("no flow lines", path)
    arr = np.asarray(rows, dtype=np.float64)
    return FlowTable(arr[:, 0].astype(np.int64), arr[:, 1].astype(np.int64), arr[:, 2].copy(), arr[:, 3].copy())


def load_network(net: str | os.PathLike, trips: str | os.PathLike | None = None, **kwargs
                 ) -> tuple[Network, np.ndarray | None]:
    """``(network, demand)`` from a net file and an optional trips file (checked against the zone count)."""
    network = read_net(net, **kwargs)
    demand = None if trips is None else read_trips(trips, network.num_zones)
    return network, demand


# ----------------------------------------------------------------------------------------------- data location

#: Known networks of the TransportationNetworks collection: folder, file prefix, the content fingerprint of
#: the link table (:meth:`Network.content_fingerprint`, to recognise the network from its file) and the
#: generalised-cost weights its README publishes (toll in minutes per toll unit, distance in minutes per
#: length unit; ``None``: the README leaves them blank).
KNOWN_NETWORKS: dict[str, dict] = {
    "SiouxFalls": dict(folder="SiouxFalls", prefix="SiouxFalls", fingerprint="51971d02be017c4f",
                       toll_factor=0.0, distance_factor=0.0),
    "Anaheim": dict(folder="Anaheim", prefix="Anaheim", fingerprint="19d1280ed2653498",
                    toll_factor=0.0, distance_factor=0.0),
    "Eastern-Massachusetts": dict(folder="Eastern-Massachusetts", prefix="EMA", fingerprint="90659f411863dcd0",
                                  toll_factor=0.0, distance_factor=0.0),
    "Berlin-Friedrichshain": dict(folder="Berlin-Friedrichshain", prefix="friedrichshain-center",
                                  fingerprint="8bef1bd54045c44e", toll_factor=None, distance_factor=None),
    "Berlin-Tiergarten": dict(folder="Berlin-Tiergarten", prefix="berlin-tiergarten", fingerprint="55b1582d33edc1ec",
                              toll_factor=None, distance_factor=None),
    "Chicago-Sketch": dict(folder="Chicago-Sketch", prefix="ChicagoSketch", fingerprint="211b2bc9c2e3f54e",
                           toll_factor=0.02, distance_factor=0.04),
    "Winnipeg": dict(folder="Winnipeg", prefix="Winnipeg", fingerprint="0c2f010ba1dd52b3",
                     toll_factor=0.0, distance_factor=0.0),
}


def identify_network(network: Network) -> str | None:
    """The name of the known network whose link table ``network`` has (by content, not by file name), or
    ``None``."""
    fp = network.content_fingerprint()
    for name, info in KNOWN_NETWORKS.items():
        if info["fingerprint"] == fp:
            return name
    return None


#: BPR powers above this are reported by :func:`unusual_links` (published networks use 4; a larger power
#: makes the link a near-wall at capacity, often a data error)
USUAL_MAX_POWER = 10.0


def unusual_links(network: Network, max_power: float = USUAL_MAX_POWER) -> list[str]:
    """Warnings for link data that is valid but unusual: BPR powers above ``max_power`` (first three links
    named, with the count)."""
    bad = np.flatnonzero((network.b > 0) & (network.power > max_power))
    if not bad.size:
        return []
    named = ", ".join(f"{network.link_label(int(a))} power {network.power[a]:g}" for a in bad[:3])
    more = f" and {bad.size - 3} more" if bad.size > 3 else ""
    return [f"unusual BPR power above {max_power:g} on {named}{more}: the cost is nearly a wall at capacity; "
            "check the link data"]


@dataclass(frozen=True)
class CostWeights:
    """Generalised-cost weights chosen by :func:`resolve_cost_weights` and what to tell the user about them."""

    toll_factor: float
    distance_factor: float
    network: str | None = None  # the recognised known network, if any
    notes: tuple[str, ...] = ()  # what was chosen and why
    warnings: tuple[str, ...] = ()  # attributes the chosen weights ignore


def resolve_cost_weights(network: Network, toll_factor: float | None = None, distance_factor: float | None = None,
                         labels: tuple[str, str] = ("toll_factor", "distance_factor")) -> CostWeights:
    """Generalised-cost weights for ``network``: the given ones, else the published ones of a network
    recognised by its content (:func:`identify_network`; Chicago-Sketch: toll 0.02, distance 0.04), else 0.

    A weight left at 0 although the links carry that attribute (non-zero tolls or lengths), without a
    published 0 for a recognised network, gives a warning naming ``labels`` (the option names).  Given
    weights must be finite and ``>= 0`` (a negative weight makes costs negative, which shortest paths cannot
    handle): :class:`fpntools.errors.UserInputError` naming the label otherwise.
    """
    from fpntools.errors import UserInputError

    given = {"toll_factor": toll_factor, "distance_factor": distance_factor}
    for (key, v), label in zip(given.items(), labels):
        if v is not None and not (math.isfinite(v) and v >= 0):
            raise UserInputError(f"{label} must be a finite number >= 0, got {v}")
    known = identify_network(network)
    published = KNOWN_NETWORKS[known] if known is not None else {}
    chosen: dict[str, float] = {}
    notes: list[str] = []
    warns: list[str] = []
    carries = {"toll_factor": ("tolls", int(np.count_nonzero(network.toll))),
               "distance_factor": ("lengths", int(np.count_nonzero(network.length)))}
    used_published = []
    for (key, v), label in zip(given.items(), labels):
        if v is not None:
            chosen[key] = float(v)
        elif published.get(key) is not None:
            chosen[key] = float(published[key])
            used_published.append(f"{label} {published[key]:g}")
        else:
            chosen[key] = 0.0
            what, count = carries[key]
            if count:
                why = (f"{known}'s README gives no weight" if known is not None else "the network is not one "
                       "whose weights are known")
                warns.append(f"{count} of {network.num_links} links carry {what} but {label} is 0, so the cost "
                             f"ignores them ({why}); pass {label} W to weigh them")
    if used_published:
        notes.append(f"recognised {known} by its link table: using its published generalised-cost weights "
                     f"({', '.join(used_published)}); pass {labels[0]} / {labels[1]} to override")
    return CostWeights(chosen["toll_factor"], chosen["distance_factor"], known, tuple(notes), tuple(warns))


def tntp_dir() -> Path | None:
    """The TNTP data folder: ``$FPNTOOLS_TNTP_DIR`` or ``<repo>/../shared/data/transportation-networks``."""
    env = os.environ.get("FPNTOOLS_TNTP_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[3] / "shared" / "data" / "transportation-networks")
    for c in candidates:
        if c.is_dir():
            return c
    return None


def tntp_files(name: str, root: str | os.PathLike | None = None) -> dict[str, Path | None]:
    """Paths ``{'net', 'trips', 'flow'}`` of a known network (``None`` for a missing file).

    Raises ``FileNotFoundError`` when the data folder or the net/trips files are absent.
    """
    if name not in KNOWN_NETWORKS:
        raise KeyError(f"unknown network {name!r}; known: {sorted(KNOWN_NETWORKS)}")
    base = Path(root) if root is not None else tntp_dir()
    if base is None:
        raise FileNotFoundError("TNTP data folder not found (set FPNTOOLS_TNTP_DIR)")
    info = KNOWN_NETWORKS[name]
    folder = base / info["folder"]
    out: dict[str, Path | None] = {}
    for kind in ("net", "trips", "flow"):
        p = folder / f"{info['prefix']}_{kind}.tntp"
        out[kind] = p if p.is_file() else None
    if out["net"] is None or out["trips"] is None:
        raise FileNotFoundError(f"{folder}: net or trips file of {name} missing")
    return out


def load_known(name: str, root: str | os.PathLike | None = None) -> tuple[Network, np.ndarray]:
    """Load a known network with its demand and its documented generalised-cost weights."""
    files = tntp_files(name, root)
    info = KNOWN_NETWORKS[name]
    net, demand = load_network(files["net"], files["trips"], toll_factor=info["toll_factor"] or 0.0,
                               distance_factor=info["distance_factor"] or 0.0)
    net.name = name
    assert demand is not None
    return net, demand


# ----------------------------------------------------------------------------------------------- writers


def write_net(network: Network, path: str | os.PathLike) -> Path:
    """Write ``network`` as a ``*_net.tntp`` file (1-based nodes, the ten standard columns)."""
    path = Path(path)
    lines = [
        f"<NUMBER OF ZONES> {network.num_zones}",
        f"<NUMBER OF NODES> {network.num_nodes}",
        f"<FIRST THRU NODE> {network.first_thru_node}",
        f"<NUMBER OF LINKS> {network.num_links}",
        "<END OF METADATA>",
        "",
        "~\t" + "\t".join(NET_COLUMNS) + "\t;",
    ]
    for k in range(network.num_links):
        vals = [network.init[k] + 1, network.term[k] + 1, network.capacity[k], network.length[k],
                network.free_flow_time[k], network.b[k], network.power[k], network.speed[k], network.toll[k],
                network.link_type[k]]
        lines.append("\t" + "\t".join(repr(float(v)) if isinstance(v, (float, np.floating)) else str(int(v))
                                      for v in vals) + "\t;")
    path.write_text("\n".join(lines) + "\n")
    return path


def write_trips(demand, path: str | os.PathLike, per_line: int = 5) -> Path:
    """Write an OD matrix (0-based zones) as a ``*_trips.tntp`` file (positive entries only)."""
    path = Path(path)
    dem = demand.toarray() if sp.issparse(demand) else np.asarray(demand, dtype=np.float64)
    z = dem.shape[0]
    lines = [f"<NUMBER OF ZONES> {z}", f"<TOTAL OD FLOW> {float(dem.sum())!r}", "<END OF METADATA>", ""]
    for o in range(z):
        lines.append(f"Origin \t{o + 1}")
        entries = [f"{d + 1:5d} : {float(dem[o, d])!r};" for d in np.flatnonzero(dem[o] > 0)]
        for s in range(0, len(entries), per_line):
            lines.append("    " + " ".join(entries[s:s + per_line]))
        lines.append("")
    path.write_text("\n".join(lines) + "\n")
    return path
