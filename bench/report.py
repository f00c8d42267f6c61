"""Turns missive-bench JSON lines into one Markdown table with Missive/Synapse ratios."""
import json
import sys

rows = {}
servers = []
for line in open(sys.argv[1]):
    line = line.strip()
    if not line.startswith("{"):
        continue
    f = json.loads(line)
    key = (f["scenario"], f["metric"], f["unit"])
    rows.setdefault(key, {})[f["server"]] = f["value"]
    if f["server"] not in servers:
        servers.append(f["server"])

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
