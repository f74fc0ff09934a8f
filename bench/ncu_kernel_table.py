#!/usr/bin/env python3
"""Per-kernel table of an Nsight Compute CSV (`ncu --metrics gpu__time_duration.sum --csv`).

Groups the profiled kernels by name and prints, per decode step, each kernel's launches and
microseconds and the step's total GPU time. Steps are counted by a kernel that runs a known
number of times per step (`--step-kernel`, a substring of its name, `--per-step` times; e.g. the
attention kernel once per layer), so a window that starts or ends mid-step still gives per-step
figures.

    python3 bench/ncu_kernel_table.py ncu.csv [--step-kernel attention_decode --per-step 30]
"""
import argparse
import csv
import collections
import re
import sys


def short_name(name):
    # "void nnkit::cuda::(anonymous namespace)::gemv_kernel<float, 4>(Args)" -> "gemv_kernel<float, 4>"
    name = re.sub(r"\(.*\)$", "", name.strip())
    name = re.sub(r"^void ", "", name)
    name = re.sub(r"^(.*::)", "", name.split("<")[0]) + (
        "<" + name.split("<", 1)[1] if "<" in name else "")
    return name[:90]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("csv")
    parser.add_argument("--step-kernel", default="append_tokens")
    parser.add_argument("--per-step", type=float, default=1.0)
    args = parser.parse_args()
    rows = []
    # Any other metrics in the CSV: averaged per kernel name, printed after the time table.
    extra = collections.defaultdict(lambda: collections.defaultdict(list))
    with open(args.csv, newline="") as f:
        lines = [line for line in f if line.startswith('"')]
    for rec in csv.DictReader(lines):
        if rec.get("Metric Name") != "gpu__time_duration.sum":
            try:
                extra[short_name(rec["Kernel Name"])][
                    rec["Metric Name"] + " (" + rec.get("Metric Unit", "") + ")"].append(
                        float(rec["Metric Value"].replace(",", "")))
            except (KeyError, ValueError):
                pass
            continue
        value = float(rec["Metric Value"].replace(",", ""))
        unit = rec.get("Metric Unit", "nsecond")
        scale = {"nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3}.get(unit, 1e-3)
        rows.append((short_name(rec["Kernel Name"]), value * scale, rec.get("Grid Size", "")))
    if not rows:
        print("no kernels in", args.csv)
        return 1
    steps = sum(1 for name, _, _ in rows if args.step_kernel in name) / args.per_step or 1.0
    totals = collections.defaultdict(lambda: [0, 0.0])
    for name, us, _ in rows:
        totals[name][0] += 1
        totals[name][1] += us
    all_us = sum(us for _, us, _ in rows)
    print(f"{len(rows)} kernels, {steps:.2f} steps (by '{args.step_kernel}' x {args.per_step:g}): "
          f"{len(rows) / steps:.0f} kernels and {all_us / steps:.1f} us of kernel time per step")
    print(f"{'kernel':90s} {'per step':>8s} {'us/step':>9s} {'us each':>8s} {'share':>6s}")
    for name, (calls, us) in sorted(totals.items(), key=lambda kv: -kv[1][1]):
        print(f"{name:90s} {calls / steps:8.1f} {us / steps:9.1f} {us / calls:8.2f} "
              f"{100 * us / all_us:5.1f}%")
    if extra:
        print("per-kernel averages of the other metrics:")
        for name, (calls, us) in sorted(totals.items(), key=lambda kv: -kv[1][1]):
            values = "  ".join(f"{metric} {sum(v) / len(v):.4g}"
                               for metric, v in sorted(extra[name].items()))
            print(f"  {name[:60]:60s} {values}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
