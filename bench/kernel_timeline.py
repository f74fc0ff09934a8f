#!/usr/bin/env python3
"""Where a replayed decode step spends its time, from bench/kernel_timeline.cpp's CSV.

Each replay of a CUDA Graph is one group of kernel records (the same correlation id). Under
programmatic dependent launch a kernel starts before its predecessor ends, so a kernel's own
duration over-counts; what the step pays for it is its *increment*: how much later the step's
frontier (the latest end so far, in start order) moves when it ends. Increments sum to the span
of the replay. Per kernel name this prints launches a step, mean duration and increment (us a
step), for the steady-state replays (the first --skip are left out), then the span, the time
between replays (host work, copies, kernels outside the graph) and those outside kernels.

    python3 bench/kernel_timeline.py timeline.csv [--skip 3] [--top 30]
"""
import argparse
import collections
import csv
import sys


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("csv")
    parser.add_argument("--skip", type=int, default=3, help="replays left out at the start")
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()

    rows = []
    with open(args.csv) as f:
        for r in csv.DictReader(f):
            rows.append((int(r["start_ns"]), int(r["end_ns"]), int(r["correlation"]),
                         int(r["graph"]), r["name"]))
    rows.sort()
    replays = collections.OrderedDict()
    for start, end, corr, graph, name in rows:
        if graph != 0:
            replays.setdefault(corr, []).append((start, end, name))
    keys = list(replays)[args.skip:]
    if len(keys) < 2:
        sys.exit(f"{len(replays)} graph replays in {args.csv}: nothing steady to report")
    spans, gaps, outside = [], [], collections.defaultdict(float)
    duration = collections.defaultdict(float)
    increment = collections.defaultdict(float)
    launches = collections.Counter()
    graph_sizes = collections.Counter()
    for i, key in enumerate(keys):
        kernels = sorted(replays[key])
        graph_sizes[len(kernels)] += 1
        frontier = kernels[0][0]
        for start, end, name in kernels:
            duration[name] += (end - start) / 1e3
            increment[name] += max(0, end - frontier) / 1e3
            frontier = max(frontier, end)
            launches[name] += 1
        spans.append((frontier - kernels[0][0]) / 1e3)
        if i + 1 < len(keys):
            next_start = min(s for s, _, _ in replays[keys[i + 1]])
            gaps.append((next_start - frontier) / 1e3)
            for start, end, corr_, graph, name in rows:
                if graph == 0 and frontier <= start < next_start:
                    outside[name] += (end - start) / 1e3
    steps = len(keys)
    spans.sort()
    gaps.sort()
    print(f"{steps} replays (after {args.skip}), kernels a replay: {dict(graph_sizes)}")
    print(f"span of a replay: median {spans[len(spans) // 2]:.1f} us "
          f"(min {spans[0]:.1f}, max {spans[-1]:.1f}); between replays: median "
          f"{gaps[len(gaps) // 2]:.1f} us")
    print(f"{'kernel':60s} {'a step':>6s} {'dur us':>9s} {'incr us':>9s} {'incr/launch':>11s}")
    total_inc = sum(increment.values()) / steps
    for name, inc in sorted(increment.items(), key=lambda kv: -kv[1])[:args.top]:
        n = launches[name] / steps
        print(f"{name[:60]:60s} {n:6.0f} {duration[name] / steps:9.1f} {inc / steps:9.1f} "
              f"{inc / launches[name]:11.2f}")
    print(f"{'sum of increments':60s} {'':6s} {'':9s} {total_inc:9.1f}")
    if outside:
        print("kernels between replays (us a step):")
        for name, t in sorted(outside.items(), key=lambda kv: -kv[1])[:10]:
            print(f"  {name[:60]:60s} {t / max(1, steps - 1):9.1f}")


if __name__ == "__main__":
    main()
