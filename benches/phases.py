#!/usr/bin/env python3
"""Where kiln's build time goes: runs `kiln build --progress=json` on a workload, cold
(`--no-cache`) and then cached, and prints the time per phase (docs/progress-json.md).

    benches/phases.py [--kiln BIN] [--root DIR] [--workload NAME] [--runs N]

Needs root (builds run sandboxes) and busybox-static (the base image is made from it, nothing is
downloaded). With --runs N, each cell is the median of N builds.

Columns per phase: how many times it ran, its total time, and its "self" time: for `exec`,
`file` and `merge`, without the `layer` phases of the same step nested in them. Steps in
parallel overlap, so totals can exceed the wall time, which is printed last.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import workloads  # noqa: E402

# In build order, as kiln names them; a phase kiln adds later is listed after these.
PHASES = ["parse", "lower", "cache-key", "cache-lookup", "source", "exec", "file", "merge", "layer", "export"]
# Phases that contain the `layer` phases of their step.
CONTAINERS = ("exec", "file", "merge")

WORKLOADS = {
    "small-app": workloads.small_app,
    "four-stages": workloads.four_stages,
    "many-layers": lambda work: workloads.many_layers(work, 20),
    "many-files": lambda work: workloads.many_files(work, 5000),
    "big-layer": lambda work: workloads.big_layer(work, 100),
}


def build(kiln, root, ctx, tag, no_cache):
    """Runs one JSON build; returns (its events, wall seconds). A failure raises with the stderr tail."""
    cmd = [str(kiln), "--root", str(root), "build", "--progress=json", "-t", tag,
           *(["--no-cache"] if no_cache else []), str(ctx)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    # Lines that are not events (log output) are skipped, as the format asks readers to.
    events = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    return events, wall


def summarize(events, wall):
    """Per phase: {count, total, self} in seconds; plus step counts and the wall times."""
    phases = defaultdict(lambda: {"count": 0, "total": 0.0, "self": 0.0})
    nested = defaultdict(float)  # step -> seconds of its layer phases
    for event in events:
        if event.get("event") == "phase" and event.get("name") == "layer" and "step" in event:
            nested[event["step"]] += event["duration_ns"] / 1e9
    for event in events:
        if event.get("event") != "phase":
            continue
        seconds = event["duration_ns"] / 1e9
        row = phases[event["name"]]
        row["count"] += 1
        row["total"] += seconds
        own = seconds - nested.get(event.get("step"), 0.0) if event["name"] in CONTAINERS else seconds
        row["self"] += max(0.0, own)
    image = [e for e in events if e.get("event") == "image"]
    return {
        "phases": dict(phases),
        "ran": sum(1 for e in events if e.get("event") == "done"),
        "cached": sum(1 for e in events if e.get("event") == "cached"),
        # From kiln's clock (start of the build to the image) and from outside (the whole process).
        "build": image[-1]["time_ns"] / 1e9 if image else None,
        "wall": wall,
    }


def median_summary(summaries):
    """One summary whose numbers are the medians of `summaries` (phase by phase)."""
    names = {name for s in summaries for name in s["phases"]}
    phases = {}
    for name in names:
        rows = [s["phases"].get(name, {"count": 0, "total": 0.0, "self": 0.0}) for s in summaries]
        phases[name] = {key: statistics.median(row[key] for row in rows) for key in ("count", "total", "self")}
    builds = [s["build"] for s in summaries if s["build"] is not None]
    return {
        "phases": phases,
        "ran": statistics.median(s["ran"] for s in summaries),
        "cached": statistics.median(s["cached"] for s in summaries),
        "build": statistics.median(builds) if builds else None,
        "wall": statistics.median(s["wall"] for s in summaries),
    }


def measure(kiln, root, ctx, tag, runs=1):
    """Cold (--no-cache) and then cached builds of `ctx`, `runs` of each: (cold, cached) summaries."""
    cold = [summarize(*build(kiln, root, ctx, tag, no_cache=True)) for _ in range(runs)]
    cached = [summarize(*build(kiln, root, ctx, tag, no_cache=False)) for _ in range(runs)]
    return median_summary(cold), median_summary(cached)


def table(cold, cached):
    """A markdown table of both summaries, phase by phase."""
    names = PHASES + sorted((set(cold["phases"]) | set(cached["phases"])) - set(PHASES))
    lines = ["| phase | cold n | cold total (s) | cold self (s) | cached n | cached total (s) | cached self (s) |",
             "|---|---|---|---|---|---|---|"]

    def cells(summary, name):
        row = summary["phases"].get(name)
        if row is None:
            return ["0", "-", "-"]
        return [f"{row['count']:g}", f"{row['total']:.4f}", f"{row['self']:.4f}"]

    for name in names:
        if name in cold["phases"] or name in cached["phases"]:
            lines.append(f"| {name} | " + " | ".join(cells(cold, name) + cells(cached, name)) + " |")

    def secs(value):
        return "-" if value is None else f"{value:.4f}"

    lines.append(f"| steps ran / cached | {cold['ran']:g} / {cold['cached']:g} | | | "
                 f"{cached['ran']:g} / {cached['cached']:g} | | |")
    lines.append(f"| build (kiln clock, to the image) | | {secs(cold['build'])} | | | {secs(cached['build'])} | |")
    lines.append(f"| wall (whole process) | | {secs(cold['wall'])} | | | {secs(cached['wall'])} | |")
    return "\n".join(lines)


def prepare_base(kiln, root, work):
    """Builds the busybox base image every workload starts FROM (cached after the first time)."""
    ctx = workloads.busybox_base(work)
    cmd = [str(kiln), "--root", str(root), "build", "-q", "-t", workloads.BASE_IMAGE, str(ctx)]
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"building the base image failed:\n{proc.stderr[-3000:]}")


def default_kiln():
    release = REPO / "target" / "release" / "kiln"
    return release if release.exists() else REPO / "target" / "debug" / "kiln"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kiln", type=Path, default=default_kiln(), help="the kiln binary (default: release, else debug)")
    parser.add_argument("--root", type=Path, default=HERE / "work" / "phases-root", help="kiln's store for these builds")
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="small-app")
    parser.add_argument("--runs", type=int, default=1, help="builds per column; cells are medians")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("benches/phases.py needs root (builds run sandboxes)")
    if not args.kiln.exists():
        sys.exit(f"no kiln binary at {args.kiln}: cargo build -p kiln (or --release)")
    work = HERE / "work"
    work.mkdir(exist_ok=True)
    prepare_base(args.kiln, args.root, work)
    ctx = WORKLOADS[args.workload](work)
    cold, cached = measure(args.kiln, args.root, ctx, f"bench-phases-{args.workload}", args.runs)
    print(f"{args.workload}: {args.kiln}, {args.runs} run(s) per column\n")
    print(table(cold, cached))


if __name__ == "__main__":
    main()
