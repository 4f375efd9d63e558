#!/usr/bin/env python3
"""Writes the results section of docs/load-balancing.md from the runs of the load-balancing
suite (bench/load_balancing.sh): one table per group of the suite file, and comparison charts
drawn with gnuplot. Standard library only.

usage: load_balancing_report.py --suite FILE --runs DIR --doc FILE --images DIR
"""
import argparse
import datetime
import json
import math
import os
import platform
import re
import shutil
import subprocess
import tempfile

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
LAST_STEPS = 50  # balance figures are averaged over the last 50 logged steps' window


def read_suite(path):
    runs = []
    with open(path) as f:
        for line in f:
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            runs.append({"groups": fields[0].split(","), "name": fields[1],
                         "ranks": int(fields[2]), "overrides": fields[3:]})
    return runs


def read_metrics(path):
    steps, evals = [], []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise SystemExit(f"{path}:{number}: {error}")
            (evals if "val_loss" in record else steps).append(record)
    return steps, evals


def model_card(log_text):
    card = {}
    patterns = {
        "total": r"total parameters\s+(\d+)",
        "active": r"active parameters / token\s+(\d+)",
        "memory_mib": r"param \+ optimizer memory\s+([\d.]+) MiB",
        "mflop": r"training FLOPs / token\s+([\d.]+) MFLOP",
        "tokens_per_s": r"done: \d+ steps in [\d.]+s \((\d+) tokens/s\)",
        "val_loss": r"final val_loss ([\d.]+)",
    }
    for key, pattern in patterns.items():
        match = re.search(pattern, log_text)
        card[key] = float(match.group(1)) if match else math.nan
    return card


def mean(values):
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def summarise(run, runs_dir):
    folder = os.path.join(runs_dir, run["name"])
    if not os.path.exists(os.path.join(folder, "finished")):
        return None
    steps, evals = read_metrics(os.path.join(folder, "metrics.jsonl"))
    with open(os.path.join(folder, "train.log")) as f:
        card = model_card(f.read())
    tail = steps[-max(1, len(steps) * LAST_STEPS // 400):]  # the last eighth of the run
    layer_mean = lambda key, rows: mean([mean(r.get(key) or []) for r in rows])
    summary = dict(run, **card)
    summary.update(
        steps=steps[-1]["step"],
        val_loss=evals[-1]["val_loss"] if evals else math.nan,
        val_curve=[(e["step"], e["val_loss"]) for e in evals],
        dropped=mean([r["dropped_frac"] for r in steps]),
        rerouted=mean([r.get("rerouted_frac", 0.0) for r in steps]),
        cv=layer_mean("load_cv", tail),
        max_mean=layer_mean("load_max_mean", tail),
        entropy=layer_mean("router_entropy", tail),
        aux=mean([r["aux_loss"] for r in tail]),
        min_load=mean([min(min(layer) for layer in r["expert_load"]) for r in tail])
        if steps[-1]["expert_load"] else math.nan,
        cv_curve=[(r["step"], mean(r.get("load_cv") or [])) for r in steps],
        worst_layer=worst_layer(tail),
        folder=folder,
    )
    rss = os.path.join(folder, "max_rss_kib")
    summary["rss_mib"] = float(open(rss).read().split()[-1]) / 1024 if os.path.exists(rss) else math.nan
    return summary


def worst_layer(rows):
    cvs = [r.get("load_cv") or [] for r in rows]
    if not cvs or not cvs[0]:
        return None
    per_layer = [mean([row[l] for row in cvs]) for l in range(len(cvs[0]))]
    return max(range(len(per_layer)), key=lambda l: per_layer[l])


def fmt(value, digits=3, percent=False):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100 * value:.{digits}f}%" if percent else f"{value:.{digits}f}"


def millions(value):
    return "-" if math.isnan(value) else f"{value / 1e6:.2f}M"


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def overrides(run):
    return " ".join(f"`{o}`" for o in run["overrides"]) or "(base)"


def line_chart(path, title, ylabel, series, logscale=False):
    """series: [(label, [(x, y), ...])] -> PNG via gnuplot."""
    gnuplot = shutil.which("gnuplot")
    if not gnuplot:
        return False
    with tempfile.TemporaryDirectory() as work:
        plots = []
        for i, (label, points) in enumerate(series):
            data = os.path.join(work, f"{i}.dat")
            with open(data, "w") as f:
                f.writelines(f"{x} {y}\n" for x, y in points if not math.isnan(y))
            plots.append(f"'{data}' using 1:2 with lines lw 2 title '{label}'")
        script = os.path.join(work, "chart.gp")
        with open(script, "w") as f:
            f.write("set terminal pngcairo size 900,480 font 'sans,10'\n")
            f.write(f"set output '{path}'\nset title '{title}'\nset xlabel 'step'\n")
            f.write(f"set ylabel '{ylabel}'\nset grid\nset key outside right\n")
            if logscale:
                f.write("set logscale y\n")
            f.write("plot " + ", ".join(plots) + "\n")
        subprocess.run([gnuplot, script], check=True)
    return True


def collapse_section(runs, images):
    rows = [[r["name"], overrides(r), fmt(r["cv"], 2), fmt(r["max_mean"], 2), fmt(r["min_load"], 3),
             fmt(r["entropy"], 2), fmt(r["aux"], 3), fmt(r["val_loss"], 4)] for r in runs]
    text = ["### 1. Collapse and its prevention",
            "Balance over the last eighth of the run, averaged over the four MoE layers "
            "(`load cv` 0 and `max/mean` 1 are perfectly balanced; 8 experts collapse to "
            "cv 2.65 and max/mean 8; `min load` is the least-used expert's share, 1/8 = 0.125 "
            "when even). The aux loss is logged for every run, also where its coefficient is 0.",
            "",
            table(["run", "overrides", "load cv", "max/mean", "min load", "router entropy",
                   "aux loss", "val_loss"], rows), ""]
    chart = os.path.join(images, "collapse_load_cv.png")
    if line_chart(chart, "load imbalance per step (coefficient of variation, mean over MoE layers)",
                  "load cv", [(r["name"], r["cv_curve"]) for r in runs]):
        text += [f"![load cv per step]({os.path.relpath(chart, 'docs')})", ""]
    for r in runs:
        layer = r["worst_layer"]
        if layer is None:
            continue
        source = os.path.join(r["folder"], f"expert_load_layer{layer}.png")
        if os.path.exists(source):
            target = os.path.join(images, f"{r['name']}_expert_load_layer{layer}.png")
            shutil.copyfile(source, target)
            text += [f"`{r['name']}`, its least balanced layer ({layer}):", "",
                     f"![{r['name']} expert load]({os.path.relpath(target, 'docs')})", ""]
    return text


def capacity_section(runs):
    rows = [[r["name"], overrides(r), fmt(r["dropped"], 2, True), fmt(r["rerouted"], 2, True),
             fmt(r["val_loss"], 4), f"{r['tokens_per_s']:,.0f}"] for r in runs]
    return ["### 2. Capacity factor, drop policy and rerouting",
            "Dropped and rerouted: the mean over the run of the fraction of assignments "
            "(all layers). Same steps and tokens for every run.", "",
            table(["run", "overrides", "dropped", "rerouted", "val_loss", "tokens/s"], rows), ""]


def trade_section(runs, images):
    rows = [[r["name"], overrides(r), millions(r["total"]), millions(r["active"]),
             fmt(r["mflop"], 2), fmt(r["memory_mib"], 1), fmt(r["rss_mib"], 0),
             fmt(r["val_loss"], 4), f"{r['tokens_per_s']:,.0f}"] for r in runs]
    text = ["### 3. Dense against MoE at equal active compute; top-1 against top-2",
            "`params + optimizer` is the model card's parameter and AdamW memory per rank "
            "(16 bytes per parameter held: it grows with the total parameters); `peak RSS` is "
            "the process's measured peak resident memory. FLOPs per training token follow the "
            f"active parameters. Every run sees the same {runs[0]['steps']} x 16 x 128 tokens.", "",
            table(["run", "overrides", "total params", "active / token", "MFLOP / token",
                   "params + optimizer MiB", "peak RSS MiB", "val_loss", "tokens/s"], rows), ""]
    chart = os.path.join(images, "tradeoff_val_loss.png")
    if line_chart(chart, "validation loss (nats per byte)", "val_loss",
                  [(r["name"], r["val_curve"]) for r in runs]):
        text += [f"![validation loss]({os.path.relpath(chart, 'docs')})", ""]
    return text


def scope_section(runs):
    rows = [[r["name"], overrides(r), fmt(r["cv"], 2), fmt(r["max_mean"], 2), fmt(r["aux"], 3),
             fmt(r["val_loss"], 4), f"{r['tokens_per_s']:,.0f}"] for r in runs]
    return ["### 4. Micro-batch against global-batch aux loss (2 ranks)",
            "Two ranks of 8 sequences each, experts split over both (`expert_parallel 2`); the "
            "global scope counts `f_e` over both ranks' groups. The validation set is the same "
            "320 sequences as in the other tables.", "",
            table(["run", "overrides", "load cv", "max/mean", "aux loss", "val_loss", "tokens/s"],
                  rows), ""]


def machine():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag in ("--suite", "--runs", "--doc", "--images"):
        parser.add_argument(flag, required=True)
    args = parser.parse_args()
    os.makedirs(args.images, exist_ok=True)
    summaries = [s for s in (summarise(run, args.runs) for run in read_suite(args.suite)) if s]
    if not summaries:
        raise SystemExit(f"{args.runs}: no finished runs")
    in_group = lambda group: [s for s in summaries if group in s["groups"]]
    text = [f"Measured {datetime.date.today().isoformat()} on {machine()}, with "
            f"`bash bench/load_balancing.sh`: {len(summaries)} runs of {summaries[0]['steps']} steps, "
            "one BLAS thread per rank under mpirun, two otherwise.", ""]
    sections = [("collapse", lambda runs: collapse_section(runs, args.images)),
                ("capacity", capacity_section),
                ("trade", lambda runs: trade_section(runs, args.images)),
                ("scope", scope_section)]
    for group, render in sections:
        if in_group(group):
            text += render(in_group(group))
    with open(args.doc) as f:
        doc = f.read()
    if BEGIN not in doc or END not in doc:
        raise SystemExit(f"{args.doc}: no {BEGIN} ... {END} section to fill")
    head, rest = doc.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    with open(args.doc, "w") as f:
        f.write(head + BEGIN + "\n" + "\n".join(text) + END + tail)


if __name__ == "__main__":
    main()
