#!/usr/bin/env python3
"""The benchmark figures of bench/results.json, rendered where the documents show them.

    python3 bench/figures.py            rewrite the generated parts of BENCHMARKS.md and README.md
    python3 bench/figures.py --check    exit 1, naming the file, if either is stale; 0 otherwise
    python3 bench/figures.py --self-test

BENCHMARKS.md gets the current-figures table between `<!-- figures:begin -->` and
`<!-- figures:end -->`; README.md gets a short list between `<!-- readme-figures:begin -->` and
`<!-- readme-figures:end -->`. Nothing else in either file is touched. A figure missing from
results.json is shown as "—"; a figure results.json has but the table below does not name is
appended at the end of the table, so no measured figure is left out.

results.json is what the bench writes: {"machine": {...}, "events", "devices",
"figures": [{"scenario", "name", "value", "unit", "ratio", "against"}]}, and, when recorded,
"commit" and "date" of the code measured (also read from "machine"). Standard library only.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results.json"
BENCHMARKS = ROOT / "BENCHMARKS.md"
README = ROOT / "README.md"
MARKERS = {
    "BENCHMARKS.md": ("<!-- figures:begin -->", "<!-- figures:end -->"),
    "README.md": ("<!-- readme-figures:begin -->", "<!-- readme-figures:end -->"),
}
DASH = "—"
COUNT_UNITS = {"devices", "commands", "requests", "events", "rows"}


class Figures:
    """results.json, looked up by (scenario, name)."""

    def __init__(self, data: dict):
        self.data = data
        self.by_key: dict[tuple[str, str], dict] = {}
        self.by_name: dict[str, dict] = {}
        for f in data.get("figures") or []:
            if not isinstance(f, dict) or "name" not in f:
                continue
            self.by_key.setdefault((f.get("scenario", ""), f["name"]), f)
            self.by_name.setdefault(f["name"], f)

    def get(self, scenario: str, name: str) -> dict | None:
        return self.by_key.get((scenario, name))

    def value(self, scenario: str, name: str) -> float | None:
        f = self.get(scenario, name)
        v = f.get("value") if f else None
        return v if isinstance(v, (int, float)) else None

    def meta(self, key: str) -> str | None:
        for holder in (self.data, self.data.get("machine") or {}, self.data.get("git") or {}):
            v = holder.get(key) if isinstance(holder, dict) else None
            if v not in (None, ""):
                return str(v)
        return None


def num(v: float | None, unit: str = "") -> str:
    if v is None:
        return DASH
    if unit in COUNT_UNITS or abs(v) >= 1000 or (abs(v) >= 100 and v == int(v)):
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def times(r: float | None) -> str:
    if r is None:
        return DASH
    return f"{r:,.0f} ×" if r >= 10 else f"{r:.2f} ×"


@dataclass
class Row:
    """One line of the table: one or more figures of a scenario shown as `a / b / c`."""

    scenario: str
    names: list[str]
    label: str
    bound: str = ""
    # (text, test on the figures) where the test returns True/False, or None if it cannot tell.
    target: tuple[str, Callable[[Figures], bool | None]] | None = None
    # A ratio results.json does not hold: (limit text, ratio) computed from the figures.
    derived: Callable[[Figures], tuple[str, float | None]] | None = None
    unit: str = ""
    extra: list[str] = field(default_factory=list)


def at_least(scenario: str, name: str, bound: float) -> Callable[[Figures], bool | None]:
    def test(f: Figures) -> bool | None:
        v = f.value(scenario, name)
        return None if v is None else v >= bound

    return test


def below(scenario: str, name: str, bound: float) -> Callable[[Figures], bool | None]:
    def test(f: Figures) -> bool | None:
        v = f.value(scenario, name)
        return None if v is None else v < bound

    return test


def ratio_at_least(scenario: str, name: str, bound: float) -> Callable[[Figures], bool | None]:
    def test(f: Figures) -> bool | None:
        g = f.get(scenario, name)
        r = g.get("ratio") if g else None
        return None if not isinstance(r, (int, float)) else r >= bound

    return test


def catch_up_over_naive(f: Figures) -> float | None:
    fast, naive = f.value("projection", "projector catch-up"), f.value(
        "projection", "naive projector (1 event per tx)"
    )
    return fast / naive if fast and naive else None


def ten_million_rebuild(f: Figures) -> bool | None:
    ms = f.value("rebuild", "rebuild time")
    if ms is None or f.data.get("events") != 10_000_000:
        return None
    return ms < 120_000


ROWS: list[Row] = [
    Row("codec", ["Avro encode (1 core)", "Avro decode (1 core)"], "Avro encode / decode, 1 core",
        "one core"),
    Row("limits", ["raw produce"], "raw produce (limit)", "tansu (memory) and librdkafka"),
    Row("limits", ["raw consume"], "raw consume (limit)", "otaledger's consumer settings"),
    Row("limits", ["postgres COPY"], "PostgreSQL `COPY` (limit)", "PostgreSQL"),
    Row("ingest", ["otaledger producer (Avro, acks=all)"], "otaledger producer",
        "idempotence, headers, a future per record"),
    Row("projection", ["projector catch-up"], "catch-up, live windows",
        "a merge of distinct rows per window",
        target=("≥ 50,000", at_least("projection", "projector catch-up", 50_000))),
    Row("projection", ["projector catch-up, far behind"], "catch-up, far behind",
        "gathering 1.55 s, then merging 1.0–1.2 s",
        target=("≥ 0.5 × raw consume",
                ratio_at_least("projection", "projector catch-up, far behind", 0.5))),
    Row("projection", ["2 instances catch-up, far behind"], "two instances, far behind",
        "the same 2 cores"),
    Row("projection", ["naive projector (1 event per tx)"], "naive projector",
        "a transaction per event",
        target=("catch-up ≥ 10 ×", lambda f: None if catch_up_over_naive(f) is None
                else catch_up_over_naive(f) >= 10),
        derived=lambda f: ("catch-up ÷ naive", catch_up_over_naive(f))),
    Row("projection", ["peak RSS, projector", "peak RSS, projector far behind"],
        "peak RSS, projector: live / far behind", "read-ahead ≤ 100,000 events"),
    Row("lag", ["steady rate (half of catch-up)"], "lag scenario's rate",
        "half the live-window catch-up"),
    Row("lag", ["occurred-at to commit p50", "occurred-at to commit p99", "occurred-at to commit max"],
        "occurred-at → commit p50 / p99 / max", "raw path, 20 ms batch wait, a transaction",
        target=("p99 < 250 ms", below("lag", "occurred-at to commit p99", 250))),
    Row("lag", ["raw produce to consume p50", "raw produce to consume p99", "raw produce to consume max"],
        "raw produce → consume p50 / p99 / max (limit)", "tansu's fetch"),
    Row("api", ["fleet size"], "API fleet", "", unit="devices"),
    Row("api", ["devices/{id} p50", "devices/{id} p99", "devices/{id} p99.9"],
        "`GET /v1/devices/{id}` p50 / p99 / p99.9", "2 queries in flight (ADR 0013)",
        target=("p99 < 5 ms", below("api", "devices/{id} p99", 5))),
    Row("api", ["summary p50", "summary p99", "summary p99.9"],
        "`GET /v1/fleet/summary` p50 / p99 / p99.9", "computed once a second"),
    Row("api", ["devices/{id} errors", "summary errors"], "API errors: lookups / summary"),
    Row("api", ["devices/{id} lookups per query"], "lookups per query"),
    Row("rebuild", ["rebuild into a shadow schema"], "rebuild into a shadow schema",
        "per window: gather 1.9 s, then commit 4–4.6 s"),
    Row("rebuild", ["rebuild time"], "rebuild time",
        target=("10M events < 120 s", ten_million_rebuild)),
    Row("rollout", ["dispatcher alone, commands queued", "dispatcher alone, over MQTT",
                    "dispatcher alone, over AMQP"], "dispatcher alone: all / MQTT / AMQP",
        "acks and commit per window (ADR 0014)",
        target=("≥ 20,000", at_least("rollout", "dispatcher alone, commands queued", 20_000))),
    Row("rollout", ["fleet size", "MQTT commands", "AMQP commands"],
        "rollout: devices / MQTT / AMQP commands", unit="devices, commands"),
    Row("rollout", ["commands dispatched", "commands over MQTT", "commands over AMQP"],
        "rollout: dispatched / MQTT / AMQP", "~10 records, 5 row writes a device"),
    Row("rollout", ["commands dispatched while waiting", "commands dispatched, best second"],
        "rollout: while waiting / best second"),
    Row("rollout", ["request to last command", "request to completion"],
        "request → last command / completion"),
    Row("rollout", ["saga decision p50", "saga decision p99"], "saga decision p50 / p99",
        "a verdict waits for the wave's last result"),
    Row("rollout", ["peak RSS, projector", "peak RSS, saga", "peak RSS, router",
                    "peak RSS, rollout-projector", "peak RSS, dispatcher", "peak RSS, mqtt-bridge",
                    "peak RSS, amqp-bridge"],
        "peak RSS: projector / saga / router / rollout projector / dispatcher / MQTT bridge / AMQP bridge",
        "device topic also holds the heartbeats"),
    Row("rollout", ["peak RSS, bench process (simulated fleet)"], "peak RSS, bench with the fleet"),
    Row("projection", ["peak RSS, bench process (naive projector, event sample)"],
        "peak RSS, bench with the naive projector"),
]


def cells(row: Row, f: Figures) -> list[str]:
    found = [f.get(row.scenario, n) for n in row.names]
    units = [g.get("unit", "") for g in found if g]
    unit = row.unit or (units[0] if units else DASH)
    values = " / ".join(num(g.get("value") if g else None, g.get("unit", "") if g else "")
                        for g in found)
    limit, ratio = DASH, DASH
    for g in found:
        if g and g.get("against"):
            against = g["against"]
            lim = f.by_name.get(against)
            lim_v = num(lim.get("value"), lim.get("unit", "")) if lim else DASH
            lim_u = f" {lim.get('unit', '')}" if lim else ""
            tag = f" ({g['name'].rsplit(' ', 1)[-1]})" if len(row.names) > 1 else ""
            limit = f"{against}: {lim_v}{lim_u}"
            r = g.get("ratio")
            ratio = times(r if isinstance(r, (int, float)) else None) + tag
            break
    if row.derived:
        text, r = row.derived(f)
        limit, ratio = text, times(r)
    target = DASH
    if row.target:
        text, test = row.target
        verdict = test(f)
        target = text + {True: ": met", False: ": **not met**", None: ": not in this run"}[verdict]
    return [row.scenario, row.label, values, unit, limit, ratio, target, row.bound or DASH]


def heading(f: Figures) -> str:
    commit, date = f.meta("commit"), f.meta("date")
    at = f"commit `{commit}`" if commit else "a commit not recorded in `bench/results.json`"
    if date:
        at += f" ({date})"
    cores = f.meta("cores") or DASH
    events, devices = f.data.get("events"), f.data.get("devices")
    size = (f"{num(events, 'events')} heartbeats from {num(devices, 'devices')} devices"
            if events and devices else "size not recorded")
    return at, cores, size


def benchmarks_block(data: dict) -> str:
    f = Figures(data)
    at, cores, size = heading(f)
    out = [
        f"Measured at {at} on {cores} cores: {size};",
        "each limit in the same run. Generated from `bench/results.json` by `python3 bench/figures.py`;",
        "do not edit by hand.",
        "",
        "| scenario | figure | value | unit | limit | ratio | target | bounded by |",
        "|---|---|---:|---|---|---:|---|---|",
    ]
    named = set()
    for row in ROWS:
        named.update((row.scenario, n) for n in row.names)
        out.append("| " + " | ".join(cells(row, f)) + " |")
    for (scenario, name) in f.by_key:
        if (scenario, name) not in named:
            out.append("| " + " | ".join(cells(Row(scenario, [name], name), f)) + " |")
    return "\n".join(out)


def readme_block(data: dict) -> str:
    f = Figures(data)
    at, cores, size = heading(f)
    v = f.value

    def ratio(scenario: str, name: str) -> str:
        g = f.get(scenario, name)
        r = g.get("ratio") if g else None
        return times(r if isinstance(r, (int, float)) else None)

    def secs(ms: float | None) -> str:
        return DASH if ms is None else f"{ms / 1000:.1f}"

    return "\n".join([
        f"Measured at {at} on {cores} cores (release build, tansu in memory), {size}:",
        "",
        f"- ingest through the otaledger producer: {num(v('ingest', 'otaledger producer (Avro, acks=all)'))}"
        f" events/s ({ratio('ingest', 'otaledger producer (Avro, acks=all)')} raw produce)",
        f"- projector catch-up: {num(v('projection', 'projector catch-up'))} events/s with live windows,"
        f" {num(v('projection', 'projector catch-up, far behind'))} far behind"
        f" ({ratio('projection', 'projector catch-up, far behind')} raw consume),"
        f" {num(v('projection', '2 instances catch-up, far behind'))} with two instances",
        f"- lag at a steady {num(v('lag', 'steady rate (half of catch-up)'))} events/s, occurred-at to"
        f" projection commit: p50 {num(v('lag', 'occurred-at to commit p50'))} ms,"
        f" p99 {num(v('lag', 'occurred-at to commit p99'))} ms"
        f" ({ratio('lag', 'occurred-at to commit p99')} the raw path's p99)",
        f"- `GET /v1/devices/{{id}}` over {num(v('api', 'fleet size'), 'devices')} devices at 5,000 req/s:"
        f" p50 {num(v('api', 'devices/{id} p50'))} ms, p99 {num(v('api', 'devices/{id} p99'))} ms",
        f"- rebuild of every projection from {num(f.data.get('events'), 'events')} events:"
        f" {secs(v('rebuild', 'rebuild time'))} s"
        f" ({num(v('rebuild', 'rebuild into a shadow schema'))} events/s)",
        f"- rollout over {num(v('rollout', 'fleet size'), 'devices')} devices:"
        f" {num(v('rollout', 'commands dispatched'))} commands/s end to end, completed in"
        f" {secs(v('rollout', 'request to completion'))} s; the dispatcher alone"
        f" {num(v('rollout', 'dispatcher alone, commands queued'))} commands/s",
    ])


def replace_between(text: str, begin: str, end: str, body: str, name: str) -> str:
    i = text.find(begin)
    j = text.find(end, i + len(begin)) if i >= 0 else -1
    if i < 0 or j < 0:
        raise SystemExit(f"{name}: markers {begin} … {end} not found")
    return text[: i + len(begin)] + "\n" + body + "\n" + text[j:]


def render(data: dict, texts: dict[str, str]) -> dict[str, str]:
    blocks = {"BENCHMARKS.md": benchmarks_block(data), "README.md": readme_block(data)}
    return {name: replace_between(text, *MARKERS[name], blocks[name], name)
            for name, text in texts.items()}


def self_test() -> None:
    sample = {"machine": {"cores": "2"}, "events": 10, "devices": 2, "figures": [
        {"scenario": "limits", "name": "raw consume", "value": 2000.0, "unit": "msg/s",
         "ratio": None, "against": None},
        {"scenario": "projection", "name": "projector catch-up, far behind", "value": 1500.0,
         "unit": "events/s", "ratio": 0.75, "against": "raw consume"},
        {"scenario": "new", "name": "a figure no row names", "value": 3.0, "unit": "x",
         "ratio": None, "against": None},
    ]}
    doc = {n: f"a\n{b}\nSTALE-TEXT\n{e}\nz\n" for n, (b, e) in MARKERS.items()}
    once = render(sample, doc)
    assert render(sample, once) == once, "rendering is not idempotent"
    table = once["BENCHMARKS.md"]
    assert "| 1,500 | events/s | raw consume: 2,000 msg/s | 0.75 × | ≥ 0.5 × raw consume: met |" in table
    assert "a figure no row names" in table and DASH in table and "not recorded" in table
    assert table.startswith("a\n") and table.endswith("\nz\n") and "STALE-TEXT" not in table
    assert f"p99 {DASH} ms" in once["README.md"]
    print("self-test passed")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if a generated part is stale")
    ap.add_argument("--self-test", action="store_true", help="render a small sample and check it")
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.self_test:
        self_test()
        return 0
    data = json.loads(args.results.read_text(encoding="utf-8"))
    paths = {"BENCHMARKS.md": BENCHMARKS, "README.md": README}
    texts = {name: p.read_text(encoding="utf-8") for name, p in paths.items()}
    new = render(data, texts)
    stale = [name for name in paths if new[name] != texts[name]]
    if args.check:
        for name in stale:
            print(f"{paths[name]} is stale: run python3 bench/figures.py", file=sys.stderr)
        return 1 if stale else 0
    for name in stale:
        paths[name].write_text(new[name], encoding="utf-8")
        print(f"wrote {paths[name]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
