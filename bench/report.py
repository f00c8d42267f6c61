"""Turns missive-bench JSON lines into one Markdown table: with Missive/Synapse ratios, or,
with --side-by-side (bench/ab.sh), every run's figures side by side, ordered by backend
then build."""
import json
import sys

side_by_side = "--side-by-side" in sys.argv[1:]
path = [a for a in sys.argv[1:] if a != "--side-by-side"][0]

rows = {}
servers = []
for line in open(path):
    line = line.strip()
    if not line.startswith("{"):
        continue
    f = json.loads(line)
    key = (f["scenario"], f["metric"], f["unit"])
    rows.setdefault(key, {})[f["server"]] = f["value"]
    if f["server"] not in servers:
        servers.append(f["server"])

if side_by_side:
    # Labels are `<build><round>-<backend>` (A1-sqlite): grouped by backend, then build.
    servers.sort(key=lambda s: (s.split("-", 1)[1], s[0], s))
    print("| scenario | metric | unit | " + " | ".join(servers) + " |")
    print("|---" * (3 + len(servers)) + "|")
    for (scenario, metric, unit), values in rows.items():
        cells = [f"{values[s]:.2f}" if s in values else "" for s in servers]
        print(f"| {scenario} | {metric} | {unit} | " + " | ".join(cells) + " |")
    sys.exit(0)

others = [s for s in servers if s != "synapse"]
header = ["scenario", "metric", "unit", "synapse"]
for s in others:
    header += [s, f"{s}/synapse"]
print("| " + " | ".join(header) + " |")
print("|" + "---|" * len(header))
for (scenario, metric, unit), values in rows.items():
    base = values.get("synapse")
    cells = [scenario, metric, unit, f"{base:.2f}" if base is not None else "-"]
    for s in others:
        v = values.get(s)
        cells.append(f"{v:.2f}" if v is not None else "-")
        cells.append(f"{v / base:.3f}" if v is not None and base else "-")
    print("| " + " | ".join(cells) + " |")
