"""What run.py makes of its results: the table, the targets, the chart and docs/benchmarks.md.

Everything here works on the JSON document run.py writes (bench/results/latest.json), so
`python3 bench/run.py --render` redraws the docs from it without running anything.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

from .workloads import WORKLOADS, human

#: Fixed targets drawn as a dashed line on their panel: (workload, metric) -> value.
TARGET_LINES = {("bulk", "jobs_per_s"): 50_000, ("roundtrip", "p99_ms"): 15.0, ("idle", "cpu_pct"): 1.0}

COLORS = {"queuectl": "#1f77b4", "queuectl-pg": "#9467bd", "redis": "#d62728", "rabbitmq": "#ff7f0e", "sqla": "#7f7f7f"}


def fmt(x: float, decimals: int = 0) -> str:
    return f"{x:,.{decimals}f}"


def label(doc: dict[str, Any], workload: str, metric_label: str) -> str:
    n = doc.get("n", {}).get(workload, WORKLOADS[workload].n)
    return metric_label.replace("{n}", human(n))


def ratio_text(ratio: float) -> str:
    return f"{ratio:.2f}x" if ratio >= 0.1 else f"{ratio:.3f}x"


def table(doc: dict[str, Any]) -> list[list[str]]:
    """Header and rows: each metric's median (min-max) per peer, then queuectl's ratio to each peer
    and queuectl-pg's to each peer that is not queuectl."""
    summary, peers, n = doc.get("summary", {}), list(doc["peers"]), doc["runs_per_figure"]
    pairs = [(q, p) for q in ("queuectl", "queuectl-pg") if q in peers
             for p in peers if p not in ("queuectl", q)]
    rows = [["metric (median of %d, min-max)" % n, *peers] + [f"{q}/{p}" for q, p in pairs]]
    for name, workload in WORKLOADS.items():
        for metric in workload.metrics:
            cells = summary.get(name, {}).get(metric.key)
            if cells is None:
                continue
            better = "higher" if metric.higher_is_better else "lower"
            row = [f"{label(doc, name, metric.label)} ({better} is better)"]
            d = metric.decimals
            for p in peers:
                s = cells.get(p)
                row.append("-" if s is None else f"{fmt(s['median'], d)} ({fmt(s['min'], d)}-{fmt(s['max'], d)})")
            for q_name, p in pairs:
                q, s = cells.get(q_name), cells.get(p)
                row.append(ratio_text(q["median"] / s["median"]) if q and s and s["median"] else "-")
            rows.append(row)
    return rows


def text_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    lines.insert(1, "|" + "|".join(" --- " if i == 0 else " ---: " for i in range(len(rows[0]))) + "|")
    return "\n".join(lines)


def _median(doc: dict[str, Any], workload: str, key: str, peer: str) -> float | None:
    cell = doc.get("summary", {}).get(workload, {}).get(key, {}).get(peer)
    return None if cell is None else cell["median"]


def targets(doc: dict[str, Any]) -> list[dict[str, str]]:
    """Each target of the issue with what this run measured: PASS, MISS, or n/a (a figure missing)."""
    out: list[dict[str, str]] = []

    def add(target: str, measured: str | None, ok: bool | None) -> None:
        out.append({"target": target, "measured": measured or "not measured in this run",
                    "status": "n/a" if ok is None else "PASS" if ok else "MISS"})

    def versus(workload: str, key: str, rivals: tuple[str, ...], factor: float, unit: str, what: str) -> None:
        q = _median(doc, workload, key, "queuectl")
        found = {p: v for p in rivals if (v := _median(doc, workload, key, p))}
        if q is None or not found:
            add(what, None, None)
            return
        best = max(found, key=lambda p: found[p])
        ratio = q / found[best]
        add(what, f"{ratio:.2f}x: queuectl {fmt(q)} vs {best} {fmt(found[best])} {unit}", ratio >= factor)

    def lower(workload: str, key: str, rival: str, factor: float, what: str, strict: bool = False) -> None:
        """A figure where lower is better: queuectl's median against `factor` times `rival`'s."""
        q, r = _median(doc, workload, key, "queuectl"), _median(doc, workload, key, rival)
        if q is None or r is None or not r:
            add(what, None, None)
            return
        ok = q < factor * r if strict else q <= factor * r
        add(what, f"{q / r:.2f}x: queuectl {q:.1f} ms vs {rival} {r:.1f} ms", ok)

    for w in ("drain", "drain-acks-late"):
        versus(w, "tasks_per_s", ("redis", "rabbitmq"), 1.0, "tasks/s",
               f"`{w}` (prefork -c 4): queuectl >= 1.0x the faster of redis and rabbitmq")
    versus("enqueue", "per_s", ("redis", "rabbitmq", "sqla"), 1.2, "msgs/s",
           "`enqueue` (one producer): queuectl >= 1.2x the fastest peer")
    bulk = _median(doc, "bulk", "jobs_per_s", "queuectl")
    add("`bulk` (`queuectl enqueue --file`): >= 50,000 jobs/s",
        None if bulk is None else f"{fmt(bulk)} jobs/s ({bulk / 50_000:.2f}x the target)",
        None if bulk is None else bulk >= 50_000)
    q50, r50 = _median(doc, "roundtrip", "p50_ms", "queuectl"), _median(doc, "roundtrip", "p50_ms", "redis")
    add("`roundtrip` p50: queuectl <= redis",
        None if q50 is None or r50 is None else f"{q50 / r50:.2f}x: queuectl {q50:.1f} ms vs redis {r50:.1f} ms",
        None if q50 is None or r50 is None else q50 <= r50)
    q99 = _median(doc, "roundtrip", "p99_ms", "queuectl")
    add("`roundtrip` p99: queuectl < 15 ms", None if q99 is None else f"{q99:.1f} ms",
        None if q99 is None else q99 < 15)
    lower("roundtrip", "p99_ms", "redis", 1.0, "`roundtrip` p99: queuectl <= redis (issue 19)")
    lower("roundtrip", "p50_ms", "redis", 0.6, "`roundtrip` p50: queuectl <= 0.6x redis (issue 19)")
    lower("mixed", "publish_p99_ms", "redis", 1.0, "`mixed` (4 producers, 2 workers): publish p99 <= redis (issue 19)")
    lower("mixed", "publish_max_ms", "rabbitmq", 1.0, "`mixed`: slowest publish <= rabbitmq's (issue 19)")
    versus("mixed", "tasks_per_s", ("redis", "rabbitmq"), 1.0, "tasks/s",
           "`mixed`: end-to-end rate >= 1.0x the faster of redis and rabbitmq (issue 19)")
    lower("mixed-8", "publish_p99_ms", "redis", 2.0, "`mixed-8` (8 producers): publish p99 < 2x redis (issue 19)",
          strict=True)
    lower("mixed-paced", "publish_p99_ms", "redis", 1.0,
          "`mixed-paced` (4 producers at one rate for every peer): publish p99 <= redis")
    cpu = _median(doc, "idle", "cpu_pct", "queuectl")
    add("`idle`: queuectl worker < 1 % of a core", None if cpu is None else f"{cpu:.2f} %",
        None if cpu is None else cpu < 1)
    small, big = (_median(doc, w, "tasks_per_s", "queuectl") for w in ("scale-10k", "scale-1m"))
    add("`scale`: drain with 1M jobs in the file >= 0.9x drain with 10k",
        None if small is None or big is None else f"{big / small:.2f}x: {fmt(big)} vs {fmt(small)} tasks/s",
        None if small is None or big is None else big >= 0.9 * small)
    return out


def targets_table(rows: list[dict[str, str]], markdown: bool) -> str:
    cells = [["target", "this run", "status"]] + [[r["target"], r["measured"], r["status"]] for r in rows]
    if markdown:
        return "\n".join(["| " + " | ".join(cells[0]) + " |", "| --- | --- | --- |"]
                         + ["| " + " | ".join(c) + " |" for c in cells[1:]])
    return text_table([[c.replace("`", "") for c in r] for r in cells])


def chart(doc: dict[str, Any], path: str) -> None:
    """One small bar panel per metric, peers side by side, error bars min-max (the scale workloads
    share two panels, one bar per database size); written as a PNG with matplotlib's Agg backend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = doc.get("summary", {})
    peers = list(doc["peers"])
    panels: list[tuple[str, str, bool, list[tuple[str, str, dict[str, float]]], float | None]] = []
    scale_names = [w for w in WORKLOADS if WORKLOADS[w].fill and w in summary]
    for name, workload in WORKLOADS.items():
        if workload.fill:
            continue
        for metric in workload.metrics:
            cells = summary.get(name, {}).get(metric.key)
            if cells:
                bars = [(p, COLORS.get(p, "#2ca02c"), cells[p]) for p in peers if p in cells]
                panels.append((label(doc, name, metric.label), metric.unit, metric.higher_is_better, bars,
                               TARGET_LINES.get((name, metric.key))))
    for key, title, unit, higher in (("tasks_per_s", "queuectl drain {n} with N jobs in the file", "tasks/s", True),
                                     ("db_mb", "queuectl file + WAL with N jobs", "MB", False)):
        bars = [(human(WORKLOADS[w].fill), COLORS["queuectl"], summary[w][key]["queuectl"])
                for w in scale_names if "queuectl" in summary[w].get(key, {})]
        if bars:
            panels.append((label(doc, scale_names[0], title), unit, higher, bars, None))
    if not panels:
        return
    cols = 4
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.9 * rows + 0.8), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (title, unit, higher, bars, target) in zip(axes.flat, panels):
        names = [b[0] for b in bars]
        med = [b[2]["median"] for b in bars]
        err = [[m - b[2]["min"] for m, b in zip(med, bars)], [b[2]["max"] - m for m, b in zip(med, bars)]]
        ax.bar(range(len(bars)), med, color=[b[1] for b in bars], yerr=err, capsize=3, width=0.65,
               error_kw={"elinewidth": 1, "ecolor": "black"})
        pad = (max(len(bars), 3) - len(bars)) / 2  # one bar is as wide as one of three
        ax.set_xlim(-0.6 - pad, len(bars) - 0.4 + pad)
        if target is not None:
            ax.axhline(target, color="black", linestyle="--", linewidth=0.8)
            ax.annotate(f"target {target:,g}", (1, target), xycoords=("axes fraction", "data"),
                        xytext=(-2, 2), textcoords="offset points", ha="right", va="bottom", fontsize=7)
        positive = [m for m in med if m > 0]
        if len(positive) == len(med) and len(med) > 1 and max(med) / min(positive) > 30:
            ax.set_yscale("log")  # sqla's 1 s poll next to milliseconds
        ax.set_xticks(range(len(bars)), names, fontsize=8)
        ax.set_title(title + ("" if higher else "  (lower is better)"), fontsize=8.5)
        ax.set_ylabel(unit, fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        for x, m in enumerate(med):
            text = f"{m:,.0f}" if m >= 100 else f"{m:.1f}" if m >= 1 else f"{m:.2f}"
            ax.annotate(text, (x, m), xytext=(0, 2), textcoords="offset points", ha="center",
                        va="bottom", fontsize=7)
        ax.margins(y=0.18)
    m = doc["machine"]
    fig.suptitle(f"queuectl benchmarks {doc['started'][:16].replace('T', ' ')}: median of "
                 f"{doc['runs_per_figure']} run(s), error bars min-max; {m.get('nproc')} CPUs, Python "
                 f"{m['python']}, Celery {m['celery']}, kombu {m['kombu']}, SQLite {m['sqlite']}; "
                 f"commit {doc['code']['before']['commit']}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _load_line(doc: dict[str, Any]) -> str:
    runs = [r for r in doc["runs"] if "machine_cpu_pct" in r]
    if not runs:
        return ""
    cpu = [r["machine_cpu_pct"] for r in runs]
    load = [r["loadavg_1m"] for r in runs]
    return (f"While the runs ran, the whole machine's CPU was {min(cpu):.0f}-{max(cpu):.0f} % busy "
            f"(median {sorted(cpu)[len(cpu) // 2]:.0f} %, the bench's own processes included) and the "
            f"1-minute load average {min(load):.1f}-{max(load):.1f} on {doc['machine'].get('nproc')} CPUs "
            "(`machine_cpu_pct`, `loadavg_1m` of each run in the JSON).")


def blocks(doc: dict[str, Any], image: str) -> dict[str, str]:
    """The generated parts of docs/benchmarks.md, by marker name."""
    m = doc["machine"]
    minutes = doc.get("seconds", 0) / 60
    cmd = doc.get("command", "python3 bench/run.py")
    sizes = ", ".join(f"`{w}` {human(n)}" for w, n in doc.get("n", {}).items() if n)
    setup = [
        f"`{cmd}`, started {doc['started']}: {doc['runs_per_figure']} run(s) of each figure, "
        f"{minutes:.0f} minutes in all{'' if doc.get('complete') else ' (interrupted: partial results)'}. "
        f"Raw figures: `{doc.get('output', 'bench/results/latest.json')}`; chart: "
        f"`{os.path.basename(image)}`.",
        "",
        f"* Machine: {m.get('nproc')} CPUs ({m.get('cpu', '?')}), {m.get('ram_gib', '?')} GiB RAM, "
        f"{m.get('platform')}, temporary files on {m.get('tmp_fs', '?')} (`{m.get('tmpdir')}`).",
        f"* Python {m['python']}, Celery {m['celery']}, kombu {m['kombu']}, billiard {m.get('billiard', '?')}, "
        f"SQLite {m['sqlite']} (Python's `sqlite3`), py-amqp {m.get('amqp', '?')}, redis-py "
        f"{m.get('redis_py', '?')}, SQLAlchemy {m.get('sqlalchemy', '?')}, matplotlib {m.get('matplotlib', '?')}.",
        f"* Code: commit {doc['code']['before']['commit']}, queuectl_kombu digest "
        f"{doc['code']['before']['queuectl_kombu_sha256']} at the start"
        + (f"; runs ran digests {', '.join(doc['code'].get('queuectl_kombu_sha256_of_runs', []))}"
           if doc["code"].get("queuectl_kombu_sha256_of_runs") else "") + ".",
    ]
    if sizes:
        setup.append(f"* Sizes (tasks, jobs or trips): {sizes}.")
    setup.append("* Peers:")
    for name, p in doc["peers"].items():
        setup.append(f"  * **{name}** ({p['version']}): {p['settings']}.")
    for name, why in doc.get("skipped", {}).items():
        setup.append(f"  * **{name}**: skipped, unreachable: {why}")
    load = _load_line(doc)
    if load:
        setup += ["", load]
    tbl = [markdown_table(table(doc)), "",
           "Ratios are queuectl's median over the peer's: above 1 is better for queuectl on rates, worse on "
           "ms, %, MiB and MB. `-`: not run for that peer (`bulk` and `scale-*` are queuectl's alone) or "
           "no figure.", "", f"![the figures of the table]({os.path.basename(image)})"]
    notes = []
    errors = [r for r in doc["runs"] if "error" in r]
    for r in errors:
        notes.append(f"* `{r['workload']}` on {r['peer']} run {r['run']} failed: {r['error']}")
    for r in doc["runs"]:
        if r.get("duplicates") or r.get("missing"):
            notes.append(f"* `{r['workload']}` on {r['peer']} run {r['run']}: {r.get('duplicates', 0)} "
                         f"duplicate(s), {r.get('missing', 0)} missing")
    digests: dict[str, list[str]] = {}
    for r in doc["runs"]:
        if "queuectl_kombu_sha256" in r and r["peer"] == "queuectl":
            digests.setdefault(r["queuectl_kombu_sha256"], []).append(f"{r['workload']} ({r['run']})")
    if len(digests) > 1:
        notes.append("* queuectl_kombu changed on disk during the run, so queuectl's figures come from "
                     "different code: " + "; ".join(f"{d} ran {', '.join(w)}" for d, w in digests.items()) + ".")
    nproc = doc["machine"].get("nproc") or 1
    busy = [r for r in doc["runs"] if r.get("loadavg_1m", 0) > 2 * nproc]
    if busy:
        notes.append(f"* Runs during which the 1-minute load average passed {2 * nproc} (2 per CPU; the "
                     "bench's own worker and publisher count in it): " + ", ".join(
                         f"{r['workload']} on {r['peer']} ({r['loadavg_1m']:.1f})" for r in busy) + ".")
    fills = [r for r in doc["runs"] if "fill_s" in r]
    if fills:
        notes.append("* Filling the `scale-*` files through JobStore took " + ", ".join(
            f"{sum(r['filled'].values()):,} jobs in {r['fill_s']:.0f} s ({r['fill_per_s']:,.0f} jobs/s)"
            for r in fills) + " (not part of the figures).")
    checked = [r for r in doc["runs"] if "missing" in r]
    if checked and not any(r.get("duplicates") or r.get("missing") for r in checked):
        notes.append(f"* Every one of the {len(checked)} runs that check deliveries (`enqueue`, `bulk`, the "
                     "drains) found each task or job exactly once: no duplicate, none missing.")
    target_rows = targets(doc)
    return {"setup": "\n".join(setup),
            "table": "\n".join(tbl),
            "targets": targets_table(target_rows, markdown=True),
            "notes": "\n".join(notes) or "* Nothing to note: no failure, no duplicate, no missing task."}


MARKER = re.compile(r"(<!-- bench:(\w+) -->\n).*?(<!-- /bench -->)", re.S)


def write_docs(doc: dict[str, Any], md_path: str, image: str) -> None:
    """Rewrite the generated parts of `md_path` (between `<!-- bench:NAME -->` and `<!-- /bench -->`),
    keeping the hand-written prose around them; draw the chart to `image`."""
    chart(doc, image)
    parts = blocks(doc, image)
    with open(md_path) as f:
        text = f.read()
    missing = [name for name in parts if f"<!-- bench:{name} -->" not in text]
    if missing:
        text = text.rstrip("\n") + "\n\n## Results\n" + "".join(
            f"\n<!-- bench:{name} -->\n<!-- /bench -->\n" for name in missing)
    text = MARKER.sub(lambda m: m.group(1) + parts.get(m.group(2), "").rstrip("\n") + "\n" + m.group(3), text)
    with open(md_path + ".tmp", "w") as f:
        f.write(text)
    os.replace(md_path + ".tmp", md_path)
