#!/usr/bin/env python3
"""Every metric the Grafana dashboard queries must be one the services expose.

Reads deploy/observability/grafana/dashboards/dockyard.json (or the file given as the first
argument), takes the `expr` of every panel target (rows' nested panels included), and checks
each `dockyard_*` name in it against the names registered in the Rust sources under libs/ and
services/.

How names come to be, so the check follows the code rather than a list kept by hand:
- a registry's prefix is `Registry::with_prefix("dockyard")` (libs/runtime/src/metrics.rs);
  every service metric goes through that registry (`Metrics::register`), and a sub-registry
  (`sub_registry_with_prefix("x")`) would add `x_` after it;
- the registered names are the string literal first argument of `.register("name", ...)`;
- the exposition (OpenMetrics) adds `_total` to counters and `_bucket`, `_sum`, `_count` to
  histograms. The kind is read from the registered value (the third argument): a type named in
  it (`BreakerGauge(...)`), else the declared type of the field or variable it names
  (`attempts: Family<AttemptLabels, Counter>`). A counter must be queried with `_total`, a
  histogram with one of its suffixes, a gauge bare; a value whose kind cannot be read accepts
  any of the suffixes.
Exits 1 listing every queried name that is not registered, or when there is nothing to check.
"""

import json
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy/observability/grafana/dashboards/dockyard.json"
SOURCES = [ROOT / "libs", ROOT / "services"]
SUFFIXES = {
    "Counter": ("_total",),
    "Histogram": ("_bucket", "_sum", "_count"),
    "Gauge": ("",),
    None: ("", "_total", "_bucket", "_sum", "_count"),
}
KINDS = re.compile(r"\b\w*(Counter|Histogram|Gauge)\w*\b")

METRIC = re.compile(r"\bdockyard_[a-z0-9_]+")
PREFIX = re.compile(r'Registry::with_prefix\(\s*"([a-z0-9_]+)"\s*\)')
SUB_PREFIX = re.compile(r'sub_registry_with_prefix\(\s*"([a-z0-9_]+)"\s*\)')
# `.register("name", "help", value)`, across line breaks (rustfmt splits long calls).
REGISTER = re.compile(
    r'\.register\(\s*"([a-z_:][a-z0-9_:]*)"\s*,\s*"(?:[^"\\]|\\.)*"\s*,\s*(.*?)\s*,?\s*\)\s*;',
    re.DOTALL,
)


def kind_of(value, text):
    """Counter, Histogram or Gauge for the registered value, None when it cannot be read."""
    found = KINDS.search(value)
    if found:
        return found.group(1)
    idents = re.findall(r"[A-Za-z_][A-Za-z0-9_]*", value.replace(".clone()", ""))
    if not idents:
        return None
    for declared in re.finditer(rf"\b{idents[-1]}\s*:\s*([^\n;]+)", text):
        found = KINDS.search(declared.group(1))
        if found:
            return found.group(1)
    return None


def registered_names():
    """Every metric name the sources register, with the prefix as the exposition shows it."""
    prefixes, sub_prefixes, names = set(), set(), {}
    for root in SOURCES:
        for path in root.rglob("*.rs"):
            if "target" in path.relative_to(root).parts:
                continue
            text = path.read_text(encoding="utf-8")
            prefixes.update(PREFIX.findall(text))
            sub_prefixes.update(SUB_PREFIX.findall(text))
            for name, value in REGISTER.findall(text):
                names[name] = kind_of(value, text)
    if not prefixes:
        sys.exit("check-dashboard: no Registry::with_prefix(...) found in the sources")
    full = {}
    for prefix in prefixes:
        for name, kind in names.items():
            full[f"{prefix}_{name}"] = kind
            full.update({f"{prefix}_{sub}_{name}": kind for sub in sub_prefixes})
    return full


def exprs(panels):
    for panel in panels:
        yield from (t["expr"] for t in panel.get("targets", []) if t.get("expr"))
        yield from exprs(panel.get("panels", []))


def exposed(known):
    """Every name the exposition shows: the registered names with their kinds' suffixes."""
    return {name + suffix for name, kind in known.items() for suffix in SUFFIXES[kind]}


def main():
    path = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else DASHBOARD
    with open(path, encoding="utf-8") as f:
        dashboard = json.load(f)
    known = registered_names()
    names = exposed(known)
    queried = sorted({m for e in exprs(dashboard.get("panels", [])) for m in METRIC.findall(e)})
    if not queried:
        sys.exit(f"check-dashboard: {path} queries no dockyard_* metric")
    missing = []
    for metric in queried:
        ok = metric in names
        print(f"{'ok     ' if ok else 'MISSING'} {metric}")
        if not ok:
            missing.append(metric)
    if missing:
        print(f"check-dashboard: {len(missing)} metric(s) queried by {path} are not registered "
              f"in libs/ or services/: {', '.join(missing)}", file=sys.stderr)
        return 1
    print(f"check-dashboard: all {len(queried)} metrics of {path.name} are registered")
    return 0


if __name__ == "__main__":
    sys.exit(main())
