"""Pairs our figures with the references measured in the same run.

Input (stdin): JSON lines. A line with "value" is one of our figures (it may
carry its own reference, such as the OS floor); a line without "value" is a
reference measured by another program (Python's multiprocessing, GNU cp) for
the same bench and case. Output: one JSON line per (figure, reference) pair
on stdout, with "speedup" (how many times better ours is; > 1 is better),
and a table on stderr."""
import json
import sys

LOWER_IS_BETTER = {"us", "ms", "s", "ns"}


def speedup(unit, value, reference_value):
    if not value or not reference_value:
        return None
    if unit in LOWER_IS_BETTER:
        return reference_value / value
    return value / reference_value


def main():
    ours, references = [], []
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        record = json.loads(line)
        (ours if "value" in record else references).append(record)

    rows = []
    for figure in ours:
        pairs = []
        if "reference" in figure:
            pairs.append((figure["reference"], figure["reference_value"]))
        for ref in references:
            if ref["bench"] == figure["bench"] and ref["case"] == figure["case"]:
                pairs.append((ref["reference"], ref["reference_value"]))
        if not pairs:
            pairs.append((None, None))
        for name, ref_value in pairs:
            out = {"bench": figure["bench"], "case": figure["case"],
                   "value": figure["value"], "unit": figure["unit"]}
            if name is not None:
                out["reference"] = name
                out["reference_value"] = ref_value
                out["speedup"] = speedup(figure["unit"], figure["value"], ref_value)
            print(json.dumps(out))
            rows.append(out)

    header = ("bench", "case", "mproc", "unit", "reference", "reference value", "mproc vs ref")
    table = [header]
    for r in rows:
        s = r.get("speedup")
        table.append((r["bench"], r["case"], "%.4g" % r["value"], r["unit"],
                      r.get("reference", "-").replace("|", "\\|"),  # a Markdown cell
                      "%.4g" % r["reference_value"] if "reference_value" in r else "-",
                      "%.2fx %s" % ((s, "better") if s >= 1 else (1 / s, "worse"))
                      if s else "-"))
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    for n, row in enumerate(table):
        sys.stderr.write("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |\n")
        if n == 0:
            sys.stderr.write("|" + "|".join("-" * (w + 2) for w in widths) + "|\n")


if __name__ == "__main__":
    main()
