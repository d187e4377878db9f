"""The benchmark issue's targets: read from bench/targets.toml, checked
against a run's medians. Each gives a row (name, measured, met), met being
True, False, or None for "not measured"; report.targets_table renders them."""

import tomllib
from dataclasses import dataclass

from .paths import TARGETS_TOML
from .scenarios import CONFIGS, SCENARIOS

MEMORY_SERVERS = ("tqserver", "nginx")


class TargetsError(ValueError):
    """bench/targets.toml is not what targets.py expects; the message says
    where (file, table, key) and what was expected."""


def rps_of(scenario, config):
    """The median requests/s of a configuration in a scenario's results, or
    None if it was not run or failed every round."""
    entry = scenario["configs"].get(config)
    return entry["median"]["rps"] if entry and entry["median"] else None


@dataclass(frozen=True)
class RatioTarget:
    """config's median requests/s >= at_least x the fastest of versus."""
    name: str
    scenarios: tuple
    config: str
    versus: tuple
    at_least: float
    p99_no_worse: bool = False
    unmeasured_row: bool = False

    def evaluate(self, scenario):
        """The row for one scenario's results, or None."""
        value = rps_of(scenario, self.config)
        measured = [(rps_of(scenario, c), c) for c in self.versus if rps_of(scenario, c)]
        base, base_config = max(measured) if measured else (None, None)
        name = self.name.format(scenario=scenario["id"])
        if value and base:
            text = f"{value / base:.2f}x"
            met = value >= self.at_least * base
            if self.p99_no_worse:
                p99 = scenario["configs"][self.config]["median"]["p99_ms"]
                base_p99 = scenario["configs"][base_config]["median"]["p99_ms"]
                text += f", p99 {p99:.2f} vs {base_p99:.2f} ms"
                met = met and p99 <= base_p99
            return (name, text, met)
        if base and self.unmeasured_row:
            return (name, "not measured", None)
        return None


@dataclass(frozen=True)
class MemoryTarget:
    """What the held idle connections add to server's RSS < below_mb."""
    name: str
    server: str
    below_mb: float

    def evaluate(self, memory):
        """The row for the memory part's results, or None."""
        if not memory or not memory.get(self.server):
            return None
        m = memory[self.server]
        cost_mb = (m["held_rss_kb"] - m["idle_rss_kb"]) / 1024
        return (self.name.format(connections=memory["connections"]),
                f"{cost_mb:.1f} MB ({m['opened']} held)",
                cost_mb < self.below_mb and m["opened"] == memory["connections"])


# The runtime part's figures a target may name, with their units.
RUNTIME_MEASURES = {"once_rps": "req/s", "kept_p50_ms": "ms", "spawn_p50_ms": "ms", "spawn_p99_ms": "ms",
                    "burst_ms": "ms"}
RUNTIMES = ("cgi", "embed")


@dataclass(frozen=True)
class RuntimeTarget:
    """A median of the runtime part for `runtime`: at least `at_least` times
    `versus`'s, or at most `at_most`, or below `below` (in its unit)."""
    name: str
    measure: str
    runtime: str
    versus: str = None
    at_least: float = None
    at_most: float = None
    below: float = None

    def evaluate(self, part):
        """The row for the runtime part's results, or None."""
        medians = (part or {}).get("median") or {}
        value = (medians.get(self.runtime) or {}).get(self.measure)
        if value is None:
            return None
        unit = RUNTIME_MEASURES[self.measure]
        if self.at_least is not None:
            base = (medians.get(self.versus) or {}).get(self.measure)
            if not base:
                return None
            return (self.name, f"{value / base:.2f}x ({value:,.1f} vs {base:,.1f} {unit})",
                    value >= self.at_least * base)
        met = value <= self.at_most if self.at_most is not None else value < self.below
        return (self.name, f"{value:,.1f} {unit}", met)


# The edge part's figures a target may name: ratios of tqserver to nginx,
# and the memory of idle TLS connections (MB of tqserver's RSS growth).
EDGE_RATIOS = ("https_hello_h1_rps", "https_hello_h2_rps", "https_static10k_h2_rps", "tls_new_conns_per_s")
EDGE_MEASURES = EDGE_RATIOS + ("idle_tls_mb",)


@dataclass(frozen=True)
class EdgeTarget:
    """A figure of the edge part: tqserver at least `at_least` times nginx
    (a ratio measure), or below `below` MB (idle_tls_mb)."""
    name: str
    measure: str
    at_least: float = None
    below: float = None

    def evaluate(self, part):
        """The row for the edge part's results, or None."""
        if not part:
            return None
        if self.measure == "idle_tls_mb":
            memory = (part.get("memory") or {}).get("tqserver")
            if not memory:
                return None
            return (self.name.format(connections=memory["connections"]),
                    f"{memory['growth_mb']:.1f} MB ({memory['opened']} held)",
                    memory["growth_mb"] < self.below and memory["opened"] == memory["connections"])
        ratio = (part.get("ratio") or {}).get(self.measure)
        if ratio is None:
            return None
        return (self.name.format(connections=None), f"{ratio:.2f}x", ratio >= self.at_least)


@dataclass(frozen=True)
class Targets:
    ratios: tuple
    memory: tuple
    runtime: tuple = ()
    edge: tuple = ()

    def scenario_order(self):
        """Scenario ids in the order the targets first name them."""
        order = []
        for target in self.ratios:
            order += [s for s in target.scenarios if s not in order]
        return order


def evaluate(results, targets=None):
    """Every target's row for a run's results (bench/targets.toml's targets
    unless others are given): the ratio targets scenario by scenario, then
    the memory targets, then the runtime part's. Targets whose figures the
    run lacks give no row."""
    if targets is None:
        targets = load_targets()
    by_id = {s["id"]: s for s in results["scenarios"]}
    rows = []
    for sid in targets.scenario_order():
        if sid not in by_id:
            continue
        for target in targets.ratios:
            if sid in target.scenarios:
                rows.append(target.evaluate(by_id[sid]))
    rows += [target.evaluate(results.get("memory")) for target in targets.memory]
    rows += [target.evaluate(results.get("runtime")) for target in targets.runtime]
    rows += [target.evaluate(results.get("edge")) for target in targets.edge]
    return [row for row in rows if row is not None]


# ---- reading the file -------------------------------------------------------

def load_targets(path=TARGETS_TOML):
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode()
    except UnicodeDecodeError as err:
        raise TargetsError(f"{path}: not UTF-8 ({err})") from None
    return parse_targets(text, path)


def parse_targets(text, source="targets.toml"):
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise TargetsError(f"{source}: {err}") from None
    unknown = set(data) - {"ratio", "memory", "runtime", "edge"}
    if unknown:
        raise TargetsError(f"{source}: unknown table {sorted(unknown)[0]!r}; "
                           "expected [[ratio]], [[memory]], [[runtime]] or [[edge]]")
    ratios = tuple(_ratio(t, f"{source}: [[ratio]] {i}") for i, t in enumerate(_tables(data, "ratio", source), 1))
    memory = tuple(_memory(t, f"{source}: [[memory]] {i}") for i, t in enumerate(_tables(data, "memory", source), 1))
    runtime = tuple(_runtime(t, f"{source}: [[runtime]] {i}")
                    for i, t in enumerate(_tables(data, "runtime", source), 1))
    edge = tuple(_edge(t, f"{source}: [[edge]] {i}") for i, t in enumerate(_tables(data, "edge", source), 1))
    return Targets(ratios, memory, runtime, edge)


def _tables(data, key, source):
    tables = data.get(key, [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise TargetsError(f"{source}: `{key}` must be an array of tables ([[{key}]])")
    return tables


SCENARIO_IDS = tuple(s["id"] for s in SCENARIOS)


def _ratio(table, where):
    fields = _fields(table, where, required={"name": str, "scenarios": list, "config": str, "versus": list,
                                             "at_least": float},
                     optional={"p99_no_worse": bool, "unmeasured_row": bool})
    for sid in fields["scenarios"]:
        _one_of(sid, SCENARIO_IDS, where, "scenarios", "a scenario id")
    _one_of(fields["config"], CONFIGS, where, "config", "a configuration id")
    for config in fields["versus"]:
        _one_of(config, CONFIGS, where, "versus", "a configuration id")
    if not fields["scenarios"] or not fields["versus"]:
        raise TargetsError(f"{where}: `scenarios` and `versus` must each name at least one")
    _check_name(fields["name"], where, {"scenario"})
    return RatioTarget(name=fields["name"], scenarios=tuple(fields["scenarios"]), config=fields["config"],
                       versus=tuple(fields["versus"]), at_least=fields["at_least"],
                       p99_no_worse=fields.get("p99_no_worse", False),
                       unmeasured_row=fields.get("unmeasured_row", False))


def _memory(table, where):
    fields = _fields(table, where, required={"name": str, "server": str, "below_mb": float}, optional={})
    _one_of(fields["server"], MEMORY_SERVERS, where, "server", "a server of the memory part")
    _check_name(fields["name"], where, {"connections"})
    return MemoryTarget(**fields)


def _runtime(table, where):
    fields = _fields(table, where, required={"name": str, "measure": str, "runtime": str},
                     optional={"versus": str, "at_least": float, "at_most": float, "below": float})
    _one_of(fields["measure"], RUNTIME_MEASURES, where, "measure", "a figure of the runtime part")
    _one_of(fields["runtime"], RUNTIMES, where, "runtime", "a php.runtime")
    limits = [k for k in ("at_least", "at_most", "below") if k in fields]
    if len(limits) != 1:
        raise TargetsError(f"{where}: exactly one of `at_least` (with `versus`), `at_most` or `below` is expected, "
                           f"got {', '.join(f'`{k}`' for k in limits) or 'none'}")
    if ("versus" in fields) != (limits[0] == "at_least"):
        raise TargetsError(f"{where}: `versus` goes with `at_least` (a ratio), and only with it")
    if "versus" in fields:
        _one_of(fields["versus"], RUNTIMES, where, "versus", "a php.runtime")
    _check_name(fields["name"], where, set())
    return RuntimeTarget(**fields)


def _edge(table, where):
    fields = _fields(table, where, required={"name": str, "measure": str},
                     optional={"at_least": float, "below": float})
    _one_of(fields["measure"], EDGE_MEASURES, where, "measure", "a figure of the edge part")
    want = "below" if fields["measure"] == "idle_tls_mb" else "at_least"
    limits = [k for k in ("at_least", "below") if k in fields]
    if limits != [want]:
        raise TargetsError(f"{where}: `{fields['measure']}` takes `{want}` (and only it)")
    _check_name(fields["name"], where, {"connections"})
    return EdgeTarget(**fields)


def _fields(table, where, required, optional):
    kinds = {**required, **optional}
    for key in table:
        if key not in kinds:
            raise TargetsError(f"{where}: unknown key `{key}`; expected one of {', '.join(kinds)}")
    for key in required:
        if key not in table:
            raise TargetsError(f"{where}: missing key `{key}`")
    out = {}
    for key, value in table.items():
        kind = kinds[key]
        if kind is float:
            # TOML's 2 and 2.0 are both a number here; true is not.
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TargetsError(f"{where}: key `{key}`: expected a number, got {value!r}")
            value = float(value)
        elif kind is list:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise TargetsError(f"{where}: key `{key}`: expected a list of strings, got {value!r}")
        elif not isinstance(value, kind):
            raise TargetsError(f"{where}: key `{key}`: expected a {kind.__name__}, got {value!r}")
        out[key] = value
    return out


def _one_of(value, allowed, where, key, what):
    if value not in allowed:
        raise TargetsError(f"{where}: key `{key}`: {value!r} is not {what} ({', '.join(allowed)})")


def _check_name(name, where, placeholders):
    try:
        name.format(**{p: "x" for p in placeholders})
    except (KeyError, IndexError, ValueError) as err:
        allowed = ("only " + ", ".join("{" + p + "}" for p in sorted(placeholders))) if placeholders \
            else "no {...} placeholder"
        raise TargetsError(f"{where}: key `name`: {name!r} may use {allowed} ({err!r})") from None
