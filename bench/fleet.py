#!/usr/bin/env python3
"""Draws and summarises `devstack fleet`'s CSV (t, cumulative LIST, GET, credential requests).

usage: fleet.py CSV --interval S --change-at S --devices N --objects N [--chart PNG] [--out MD]
"""
import argparse
import csv


def rates(rows, key):
    """Requests per 1-second bin."""
    end = int(float(rows[-1]["t"])) + 1
    counts = [0] * end
    prev = 0
    for r in rows:
        v = int(r[key])
        counts[min(int(float(r["t"])), end - 1)] += v - prev
        prev = v
    return counts


def main():
    p = argparse.ArgumentParser()
    p.add_argument("csv")
    p.add_argument("--interval", type=int, required=True)
    p.add_argument("--change-at", type=int, required=True)
    p.add_argument("--devices", type=int, required=True)
    p.add_argument("--objects", type=int, required=True)
    p.add_argument("--chart")
    p.add_argument("--out")
    a = p.parse_args()
    rows = list(csv.DictReader(open(a.csv)))
    lists, gets, creds = (rates(rows, k) for k in ("list", "get", "credentials"))
    lines = [
        f"{a.devices} devices, `syncIntervalSeconds` {a.interval}, {a.objects} objects of 4 KiB per prefix; "
        f"all started at t = 0; the configuration changed (another prefix) at t = {a.change_at} s.",
        "",
        "| interval (s) | LIST requests | busiest second's share | peak LIST/s | GET | credential requests |",
        "|---|---|---|---|---|---|",
    ]
    for start in range(0, len(lists), a.interval):
        window = lists[start:start + a.interval]
        total = sum(window)
        if not total:
            continue
        peak = max(window)
        end = min(start + a.interval, len(lists))
        mark = " (change)" if start <= a.change_at < end else ""
        lines.append(
            f"| {start}-{end}{mark} | {total} | {100 * peak / total:.0f} % | {peak} | "
            f"{sum(gets[start:end])} | {sum(creds[start:end])} |"
        )
    c0, c1 = a.change_at, a.change_at + a.interval
    lines += [
        "",
        f"First pass after the change ({c0}-{c1} s): {sum(lists[c0:c1])} LIST, {sum(gets[c0:c1])} GET, "
        f"{sum(creds[c0:c1])} credential requests, {sum(gets[c0:c1]) * 4} KiB; per device "
        f"{sum(lists[c0:c1]) / a.devices:.1f} LIST, {sum(gets[c0:c1]) / a.devices:.1f} GET, "
        f"{sum(creds[c0:c1]) / a.devices:.1f} credential requests.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        open(a.out, "w").write(text)
    if a.chart:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(10, 4.5))
        xs = list(range(len(lists)))
        ax.step(xs, lists, where="post", label="S3 LIST / s", color="#1c7ed6")
        ax.step(xs, [g / max(a.objects, 1) for g in gets], where="post",
                label=f"S3 GET / s ÷ {a.objects}", color="#37b24d", alpha=0.7)
        ax.step(xs, creds, where="post", label="credential requests / s", color="#d9480f")
        ax.axvline(a.change_at, color="#868e96", linestyle="--", label="configuration change")
        ax.set_xlabel("seconds")
        ax.set_ylabel("requests per second")
        ax.set_title(f"{a.devices} gg-s3-sync devices, {a.interval} s interval, jitter ±10 %")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(a.chart, dpi=90)
        print(f"chart: {a.chart}")


if __name__ == "__main__":
    main()
