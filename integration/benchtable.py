#!/usr/bin/env python3
"""Medians and ratios of the fio results written by integration/bench.sh.

Prints a Markdown table: MiB/s for 1 MiB jobs, IOPS for 4 KiB jobs, median
over rounds, and cryptds's ratio to each peer.
"""
import glob, json, os, statistics, sys
from collections import defaultdict

out = sys.argv[1]
vals = defaultdict(list)
for p in glob.glob(os.path.join(out, "*.json")):
    fs, mode, name, _ = os.path.basename(p).split(".")[:4]
    with open(p) as f:
        d = json.load(f)
    j = d["jobs"][0]
    if name.startswith("seq"):
        side = "write" if name == "seqwrite" else "read"
        v = j[side]["bw_bytes"] / 2**20
    else:
        v = j["read"]["iops"] + j["write"]["iops"]
    vals[(fs, mode, name)].append(v)

jobs = ["seqwrite", "seqread", "randwrite", "randread", "randrw70"]
fses = ["raw", "loopback", "gocryptfs", "cryptds"]
for mode in ["buffered", "direct"]:
    if not any(k[1] == mode for k in vals):
        continue
    print(f"\n### {mode} ({'psync, iodepth 1' if mode == 'buffered' else 'O_DIRECT, libaio, iodepth 16'})\n")
    print("| filesystem | seqW MiB/s | seqR MiB/s | randW IOPS | randR IOPS | 70/30 IOPS |")
    print("|---|---|---|---|---|---|")
    med = {}
    for fs in fses:
        row = []
        for jn in jobs:
            v = vals.get((fs, mode, jn))
            if v:
                med[(fs, jn)] = statistics.median(v)
                row.append(f"{med[(fs, jn)]:.0f}" if jn.startswith("seq") else f"{med[(fs, jn)]/1000:.1f}k")
            else:
                row.append("—")
        print(f"| {fs} | " + " | ".join(row) + " |")
    for peer in ["raw", "loopback", "gocryptfs"]:
        row = []
        for jn in jobs:
            a, b = med.get(("cryptds", jn)), med.get((peer, jn))
            row.append(f"{a/b:.2f}×" if a and b else "—")
        print(f"| cryptds / {peer} | " + " | ".join(row) + " |")
rounds = max((len(v) for v in vals.values()), default=0)
print(f"\nmedians of {rounds} interleaved rounds")
