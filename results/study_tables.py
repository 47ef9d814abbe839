"""RESULTS.md's tables, printed as Markdown from `make study`'s summary (results/study_summary.json).

    .venv/bin/python results/study_tables.py [results/study_summary.json]

Every number is read from the JSON `tmcli analyze --json` wrote; nothing is computed here but
formatting (percentages, intervals in brackets) and which groups go in which table.
"""

from __future__ import annotations

import json
import sys

NAMES = {"smollm2-135m": "SmolLM2-135M", "gemma3-270m": "Gemma-3-270M"}


def arm(g: dict) -> str:
    """The sampling arm of a group: ``top-k 50``, ``pure``, ``top-p 0.95``, ``min-p 0.05``."""
    parts = [f"top-k {g['top_k']}" if g.get("top_k") else "",
             f"top-p {g['top_p']:g}" if g.get("top_p") not in (None, 1) else "",
             f"min-p {g['min_p']:g}" if g.get("min_p") else ""]
    return " ".join(p for p in parts if p) or "pure"


def pct(g: dict, name: str, digits: int = 0) -> str:
    v, lo, hi = g[name], g[name + "_lo"], g[name + "_hi"]
    if v is None:
        return "–"
    if lo is None or hi is None or lo == hi:
        return f"{100 * v:.{digits}f}%"
    return f"{100 * v:.{digits}f}% [{100 * lo:.{digits}f}, {100 * hi:.{digits}f}]"


def signed(g: dict, name: str) -> str:
    v, lo, hi = g[name], g[name + "_lo"], g[name + "_hi"]
    if v is None:
        return "–"
    f = f"{100 * v:+.2f}%".replace("+0.00", "0.00").replace("-", "−")
    if lo is None or hi is None or lo == hi:
        return f
    return f"{f} [{100 * lo:.2f}, {100 * hi:.2f}]".replace("-", "−")


def kinds(g: dict) -> str:
    return "/".join(str(g[f"n_{k}"]) for k in ("merged", "lengthened", "resegmented",
                                                 "invalid_utf8"))


def fit(f: dict, prefix: str) -> str:
    """A logistic fit's midpoint, slope and RMSE, or why there is none."""
    if f[prefix + "midpoint"] is None:
        return "no fit: " + (f[prefix + "reason"] or "")
    return f"{f[prefix + 'midpoint']:.2f}, {f[prefix + 'slope']:.1f}, {f[prefix + 'rmse']:.3f}"


def ci(r: dict, name: str, fmt: str = ".2f") -> str:
    """A figure with its interval in brackets (empty when missing), minus signs typeset."""
    v, lo, hi = r.get(name), r.get(name + "_lo"), r.get(name + "_hi")
    if v is None:
        return ""
    text = f"{v:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]" if lo is not None else f"{v:{fmt}}"
    return text.replace("-", "−")


def main(path: str = "results/study_summary.json") -> None:
    data = json.load(open(path))
    groups = [g for g in data["groups"] if (g.get("canonical") or "off") == "off"]
    print("## Main arm (top-k 50) and pure sampling, by temperature\n")
    print("| model | T | arm | non-canonical | compressed | per-token rate | mean compression | "
          "merged / lengthened / re-seg. / invalid UTF-8 |")
    print("|---|---|---|---|---|---|---|---|")
    for model in NAMES:
        for which in ("top-k 50", "pure"):
            for g in sorted((g for g in groups if g["model"] == model and arm(g) == which),
                            key=lambda g: g["temperature"]):
                print(f"| {NAMES[model]} | {g['temperature']:g} | {which} | "
                      f"{pct(g, 'fraction_noncanonical')} | {pct(g, 'fraction_compressed')} | "
                      f"{pct(g, 'token_rate', 2)} | {signed(g, 'mean_compression')} | "
                      f"{kinds(g)} |")
    print("\n## Truncation at T = 1\n")
    print("| model | arm | non-canonical | compressed | per-token rate | mean compression |")
    print("|---|---|---|---|---|---|")
    order = ("pure", "top-p 0.95", "top-p 0.9", "min-p 0.05", "top-k 50")
    for model in NAMES:
        at1 = {arm(g): g for g in groups if g["model"] == model and g["temperature"] == 1}
        for which in order:
            if which in at1:
                g = at1[which]
                print(f"| {NAMES[model]} | {which} | {pct(g, 'fraction_noncanonical')} | "
                      f"{pct(g, 'fraction_compressed')} | {pct(g, 'token_rate', 2)} | "
                      f"{signed(g, 'mean_compression')} |")
    print("\n## Logistic fits vs temperature\n")
    print("| model | arm | non-canonical: midpoint T, slope, RMSE | compressed (the study's) |")
    print("|---|---|---|---|")
    for f in data["sigmoid_fits"]:
        if f["n_temperatures"] < 3 or (f.get("canonical") or "off") != "off":
            continue
        print(f"| {NAMES.get(f['model'], f['model'])} | {arm(f)} | {fit(f, 'nc_')} | "
              f"{fit(f, '')} |")
    print("\n## Canonical vs free (paired by prompt)\n")
    print("| model | T | arm | mode | non-canonical | NLL/token | chars/token | "
          "Δ NLL/token vs off | Δ chars/token |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in data["canonical_comparison"]:
        print(f"| {NAMES.get(r['model'], r['model'])} | {r['temperature']:g} | {arm(r)} | "
              f"{r['canonical']} | {r['n_noncanonical']}/{r['n']} | {ci(r, 'nll_token')} | "
              f"{r['chars_per_token']:.2f} | {ci(r, 'diff_nll_token')} | "
              f"{ci(r, 'diff_chars_per_token')} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
