#!/usr/bin/env python3
"""The benchmark harness behind bench/run (see docs/benchmarks.md).

Runs gg-s3-sync, aws-cli, s5cmd and rclone against one devstack S3 in the same run, ROUNDS
times, alternating the tools (A B C D, A B C D, ...), for these scenarios:

  small-first   first sync of SMALL x 4 KiB objects (fresh folder)
  small-noop    the same again: nothing to do
  small-one     one object of the SMALL changed since the last sync
  large         one LARGE_MIB object (fresh folder)
  ten           TEN x TEN_MIB objects (fresh folder)

For every tool run it records wall time, the tool's CPU time (user + system, from GNU time),
peak RSS, and the S3 server's CPU time during the run (from /proc/<pid>/stat). It also measures
ceilings in the same run: the bare LIST requests (s5cmd ls) for the small scenarios, and raw
parallel ranged GETs of presigned URLs with curl (to /dev/null) for the large ones. It reports
medians and min-max, ratios to gg-s3-sync, writes every sample as JSON, and draws a PNG chart.
Every copy is checked (file counts; the large object byte for byte).

No timing is asserted: --quick (tiny sizes, one round) only proves the harness runs.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

TOOLS = ["gg-s3-sync", "aws-cli", "s5cmd", "rclone"]
SCENARIOS = ["small-first", "small-noop", "small-one", "large", "ten"]
TICKS = os.sysconf("SC_CLK_TCK")


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def server_cpu(pid):
    """The process's user + system CPU seconds so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def machine_cpu():
    """Busy CPU seconds of the whole machine so far (every CPU; idle and iowait excluded):
    with the tool's and the server's CPU it shows what runs elsewhere, e.g. the kernel's
    flusher threads writing back what a tool left dirty."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = v[:8]
    return (user + nice + system + irq + softirq + steal) / TICKS


def timed(cmd, env, work, server_pid):
    """Runs cmd under GNU time; returns wall, cpu (user+sys), rss (MiB), server cpu and the
    machine's busy CPU over the run."""
    out = os.path.join(work, "time.out")
    # Nothing dirty when a run starts: no run pays for writing back what the one before it
    # left in the page cache (a tool that syncs its files would otherwise wait for all of it).
    os.sync()
    before = server_cpu(server_pid)
    machine_before = machine_cpu()
    p = subprocess.run(
        ["/usr/bin/time", "-f", "%e %U %S %M", "-o", out] + cmd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    after = server_cpu(server_pid)
    machine = machine_cpu() - machine_before
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{p.stderr.decode()[-2000:]}")
    wall, user, system, kb = open(out).read().split()[-4:]
    return {
        "wall": float(wall),
        "cpu": float(user) + float(system),
        "rss": int(kb) / 1024,
        "server_cpu": after - before,
        "machine_cpu": machine,
    }


def count_files(d):
    return sum(
        1
        for _, _, files in os.walk(d)
        for f in files
        if not f.startswith(".")
    )


def write_random(path, size):
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 1 << 20)
            f.write(os.urandom(n))
            left -= n


class Bench:
    def __init__(self, a):
        self.a = a
        self.work = tempfile.mkdtemp(prefix="gg-s3-sync-bench.")
        self.samples = []  # {tool, scenario, round, wall, cpu, rss, server_cpu}
        self.ceilings = []  # {what, scenario, round, wall}
        # Variants: other gg-s3-sync builds or settings, run in the same rounds (A/B).
        self.variants = {}
        for v in a.variant:
            name, _, spec = v.partition("=")
            path, *envs = spec.split(":")
            if not name or not path:
                sys.exit(f"--variant {v!r}: expected NAME=PATH[:VAR=VALUE...]")
            self.variants[name] = (path, dict(e.split("=", 1) for e in envs))
        self.tools = [t for t in TOOLS if not a.only or t in a.only.split(",")] + list(self.variants)
        self.scenarios = [x for x in SCENARIOS if not a.scenarios or x in a.scenarios.split(",")]
        if any(x in self.scenarios for x in ("small-noop", "small-one")) and "small-first" not in self.scenarios:
            sys.exit("--scenarios: small-noop and small-one need small-first")

    # ---- the server -------------------------------------------------------------------
    def start(self):
        out = open(os.path.join(self.work, "serve.out"), "w")
        self.server = subprocess.Popen(
            [self.a.devstack, "serve", "--dir", os.path.join(self.work, "stack")],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        for _ in range(200):
            text = open(os.path.join(self.work, "serve.out")).read()
            if "READY" in text:
                break
            time.sleep(0.1)
        else:
            sys.exit("devstack serve did not start:\n" + text)
        self.vars = dict(
            line.split("=", 1)
            for line in text.splitlines()
            if "=" in line and line.split("=", 1)[0].isupper()
        )
        self.bucket = self.vars["BUCKET"]
        self.endpoint = self.vars["S3_ENDPOINT"]
        self.env = dict(os.environ)
        self.env.update(
            AWS_ACCESS_KEY_ID=self.vars["AWS_ACCESS_KEY_ID"],
            AWS_SECRET_ACCESS_KEY=self.vars["AWS_SECRET_ACCESS_KEY"],
            AWS_DEFAULT_REGION=self.vars.get("AWS_DEFAULT_REGION", "us-east-1"),
            AWS_CONFIG_FILE="/dev/null",
            AWS_SHARED_CREDENTIALS_FILE="/dev/null",
        )
        self.env.pop("AWS_SESSION_TOKEN", None)
        self.bucket_dir = os.path.join(self.work, "stack", "s3", self.bucket)

    def stop(self):
        self.server.terminate()
        self.server.wait()

    # ---- data -------------------------------------------------------------------------
    def seed(self):
        a = self.a
        # Every object goes through S3, so its ETag is stored as in a real bucket: s3s-fs
        # hashes a file that was not uploaded through it on every GET, HEAD and listing, a
        # cost real S3 does not have (and one that grew with each conditional request).
        small = os.path.join(self.work, "seed-small")
        os.makedirs(small)
        for i in range(a.small):
            with open(os.path.join(small, f"{i:06d}.txt"), "wb") as f:
                f.write(os.urandom(4096))
        self.s5(["cp", os.path.join(small, "*"), f"s3://{self.bucket}/bench/small/"])
        # Kept until the end: deleting 10 000 files here made the first timed run pay for
        # ext4's recently-freed-inode scans (see discard).
        # Large objects go through S3 (multipart), so their ETags are stored as in a real
        # bucket: s3s-fs would otherwise hash the whole file on every (ranged) GET.
        blobs = os.path.join(self.work, "blobs")
        os.makedirs(blobs)
        self.large_blob = os.path.join(blobs, "blob.bin")
        if "large" in self.scenarios:
            write_random(self.large_blob, a.large_mib << 20)
            self.s5(["cp", self.large_blob, f"s3://{self.bucket}/bench/large/blob.bin"])
        if "ten" not in self.scenarios:
            return
        for i in range(a.ten):
            p = os.path.join(blobs, f"part-{i:02d}.bin")
            write_random(p, a.ten_mib << 20)
        self.s5(["cp", os.path.join(blobs, "part-*.bin"), f"s3://{self.bucket}/bench/ten/"])
        for i in range(a.ten):
            os.remove(os.path.join(blobs, f"part-{i:02d}.bin"))

    def change_one(self, round_no):
        """Overwrites one small object through S3 (same size, new bytes): the one-changed
        scenario."""
        name = f"{(round_no * 7919) % self.a.small:06d}.txt"
        path = os.path.join(self.work, name)
        with open(path, "wb") as f:
            f.write(os.urandom(4096))
        self.s5(["cp", path, f"s3://{self.bucket}/bench/small/{name}"])
        os.remove(path)

    def s5(self, args):
        sh([self.a.s5cmd, "--endpoint-url", self.endpoint] + args, env=self.env, stdout=subprocess.DEVNULL)

    # ---- the tools --------------------------------------------------------------------
    def gg_config(self, prefix, dest):
        c = json.load(open(self.vars["CONFIG"]))
        c.update(prefix=prefix, localDir=dest, stateDir=dest + ".state", maxConcurrency="16")
        path = dest + ".json"
        json.dump(c, open(path, "w"))
        return path

    def command(self, tool, prefix, dest):
        src = f"s3://{self.bucket}/{prefix}"
        if tool == "gg-s3-sync":
            return [self.a.gg, "once", "--config", self.gg_config(prefix, dest)]
        if tool in self.variants:
            path, envs = self.variants[tool]
            return ["env"] + [f"{k}={v}" for k, v in envs.items()] + [
                path, "once", "--config", self.gg_config(prefix, dest)]
        if tool == "aws-cli":
            return [self.a.python, "-m", "awscli", "s3", "sync", "--only-show-errors",
                    "--endpoint-url", self.endpoint, src, dest]
        if tool == "s5cmd":
            return [self.a.s5cmd, "--endpoint-url", self.endpoint, "sync", src + "*", dest + "/"]
        if tool == "rclone":
            return ["env", "-u", "AWS_CA_BUNDLE", "RCLONE_CONFIG=/dev/null", "RCLONE_S3_PROVIDER=Other",
                    f"RCLONE_S3_ENDPOINT={self.endpoint}", "RCLONE_S3_FORCE_PATH_STYLE=true",
                    f"RCLONE_S3_ACCESS_KEY_ID={self.env['AWS_ACCESS_KEY_ID']}",
                    f"RCLONE_S3_SECRET_ACCESS_KEY={self.env['AWS_SECRET_ACCESS_KEY']}",
                    self.a.rclone, "--low-level-retries", "1", "--transfers", "16", "--checkers", "16",
                    "sync", f":s3:{self.bucket}/{prefix}", dest]
        raise ValueError(tool)

    def dest(self, tool, what):
        return os.path.join(self.work, "out", f"{tool}-{what}")

    def discard(self, path, many_files):
        """Removes a previous copy. One with many files is moved aside (deleted at the end):
        deleting 10 000 files just before a run made the next tool pay for it, since ext4
        skips recently freed inodes when it allocates (`recently_deleted`), and without a
        journal it reads the inode table to find out. A few large files are deleted at once:
        kept, gigabytes of them filled the page cache, and in later rounds every tool paid
        for reclaim (up to 4x the CPU for the large object)."""
        if not os.path.exists(path):
            return
        if not many_files and os.path.isdir(path):
            shutil.rmtree(path)
        elif not many_files:
            os.remove(path)
        else:
            trash = os.path.join(self.work, "trash")
            os.makedirs(trash, exist_ok=True)
            os.rename(path, os.path.join(trash, f"{len(os.listdir(trash))}"))

    def run_tool(self, tool, scenario, r):
        prefix, what, fresh, expect = {
            "small-first": ("bench/small/", "small", True, self.a.small),
            "small-noop": ("bench/small/", "small", False, self.a.small),
            "small-one": ("bench/small/", "small", False, self.a.small),
            "large": ("bench/large/", "large", True, 1),
            "ten": ("bench/ten/", "ten", True, self.a.ten),
        }[scenario]
        dest = self.dest(tool, what)
        if fresh:
            self.discard(dest, what == "small")
            self.discard(dest + ".state", what == "small")
        os.makedirs(dest, exist_ok=True)
        s = timed(self.command(tool, prefix, dest), self.env, self.work, self.server.pid)
        n = count_files(dest)
        if n != expect:
            sys.exit(f"{tool} {scenario}: {n} files in {dest}, expected {expect}")
        if scenario == "large":
            sh(["cmp", os.path.join(dest, "blob.bin"), self.large_blob])
        s.update(tool=tool, scenario=scenario, round=r)
        self.samples.append(s)
        print(f"  {scenario:12} {tool:11} {s['wall']:7.2f} s  cpu {s['cpu']:6.2f} s  "
              f"{s['rss']:6.1f} MiB  server cpu {s['server_cpu']:6.2f} s", flush=True)

    # ---- ceilings ---------------------------------------------------------------------
    def ceiling_list(self, r):
        cmd = [self.a.s5cmd, "--endpoint-url", self.endpoint, "ls", f"s3://{self.bucket}/bench/small/*"]
        s = timed(cmd, self.env, self.work, self.server.pid)
        self.ceilings.append({"what": "LIST", "scenario": "small-noop", "round": r, **s})

    def presign(self, key):
        out = subprocess.run(
            [self.a.python, "-m", "awscli", "s3", "presign", "--endpoint-url", self.endpoint,
             f"s3://{self.bucket}/{key}"],
            env=self.env, check=True, capture_output=True, text=True,
        )
        return out.stdout.strip()

    def presign_small(self):
        """Presigned URLs of every small object (botocore, in one process: fast)."""
        script = (
            # awscli 1.46 carries its own botocore, importable once awscli is.
            "import sys, awscli.clidriver, botocore.session, botocore.config\n"
            "c = botocore.session.get_session().create_client('s3', endpoint_url=sys.argv[1],"
            " config=botocore.config.Config(s3={'addressing_style': 'path'}))\n"
            "for i in range(int(sys.argv[3])):\n"
            "    print(c.generate_presigned_url('get_object', ExpiresIn=7200,"
            " Params={'Bucket': sys.argv[2], 'Key': 'bench/small/%06d.txt' % i}))\n"
        )
        out = subprocess.run([self.a.python, "-c", script, self.endpoint, self.bucket, str(self.a.small)],
                             env=self.env, check=True, capture_output=True, text=True)
        return out.stdout.split()

    def ceiling_small_get(self, r):
        """Every small object fetched once by 16 curl processes (each reusing its connection)
        into /dev/null: what the server needs for the GETs alone, with a minimal client."""
        if not hasattr(self, "small_urls"):
            self.small_urls = self.presign_small()
        configs = []
        for w in range(16):
            path = os.path.join(self.work, f"curl-{w}.cfg")
            with open(path, "w") as f:
                for url in self.small_urls[w::16]:
                    f.write(f'url = "{url}"\noutput = "/dev/null"\n')
            configs.append(path)
        cmd = ["sh", "-c", "for c in \"$@\"; do curl -sf -K \"$c\" & done; wait", "sh"] + configs
        s = timed(cmd, self.env, self.work, self.server.pid)
        self.ceilings.append({"what": "GET", "scenario": "small-first", "round": r, **s})

    def ceiling_get(self, scenario, r):
        """Parallel ranged GETs (4 at a time, 8 MiB ranges) of presigned URLs, to /dev/null."""
        if scenario == "large":
            objects = [("bench/large/blob.bin", self.a.large_mib << 20)]
        else:
            objects = [(f"bench/ten/part-{i:02d}.bin", self.a.ten_mib << 20) for i in range(self.a.ten)]
        part = 8 << 20
        lines = []
        for key, size in objects:
            url = self.presign(key)
            for start in range(0, size, part):
                end = min(start + part, size) - 1
                lines.append(f"{start}-{end} {url}")
        listing = os.path.join(self.work, "ranges.txt")
        open(listing, "w").write("\n".join(lines) + "\n")
        cmd = ["sh", "-c", f"xargs -P 4 -L 1 sh -c 'curl -sf -r \"$0\" -o /dev/null \"$1\"' < {listing}"]
        s = timed(cmd, self.env, self.work, self.server.pid)
        self.ceilings.append({"what": "GET", "scenario": scenario, "round": r, **s})

    # ---- the run ----------------------------------------------------------------------
    def run(self):
        tools = self.tools
        for r in range(self.a.rounds):
            order = tools[r % len(tools):] + tools[: r % len(tools)]
            print(f"round {r + 1}/{self.a.rounds}: {' '.join(order)}", flush=True)
            for scenario in self.scenarios:
                if scenario == "small-one":
                    self.change_one(r)
                for tool in order:
                    self.run_tool(tool, scenario, r)
                if scenario == "small-first":
                    self.ceiling_small_get(r)
                if scenario == "small-noop":
                    self.ceiling_list(r)
                if scenario in ("large", "ten"):
                    self.ceiling_get(scenario, r)

    # ---- the report -------------------------------------------------------------------
    def stats(self, rows, key):
        v = sorted(x[key] for x in rows)
        return statistics.median(v), v[0], v[-1]

    def report(self):
        a = self.a
        lines = [
            f"{a.small} x 4 KiB objects, 1 x {a.large_mib} MiB, {a.ten} x {a.ten_mib} MiB; "
            f"{a.rounds} alternating round(s); median (min-max); xN = the tool's median / gg-s3-sync's.",
            "",
            "| scenario | tool | wall s | client CPU s | peak RSS MiB | server CPU s | machine CPU s | wall xN | CPU xN |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        summary = {}
        for scenario in self.scenarios:
            base = [x for x in self.samples if x["scenario"] == scenario and x["tool"] == "gg-s3-sync"]
            for tool in self.tools:
                rows = [x for x in self.samples if x["scenario"] == scenario and x["tool"] == tool]
                if not rows:
                    continue
                cells = {}
                for key in ("wall", "cpu", "rss", "server_cpu", "machine_cpu"):
                    cells[key] = self.stats(rows, key)
                summary[f"{scenario}/{tool}"] = {k: v[0] for k, v in cells.items()}
                fmt = lambda k, d: f"{cells[k][0]:.{d}f} ({cells[k][1]:.{d}f}-{cells[k][2]:.{d}f})"
                ratio = lambda k: (
                    f"x{cells[k][0] / self.stats(base, k)[0]:.2f}"
                    if base and tool != "gg-s3-sync" and self.stats(base, k)[0] > 0 else ""
                )
                lines.append(
                    f"| {scenario} | {tool} | {fmt('wall', 2)} | {fmt('cpu', 2)} | {fmt('rss', 0)} | "
                    f"{fmt('server_cpu', 2)} | {fmt('machine_cpu', 2)} | {ratio('wall')} | {ratio('cpu')} |"
                )
        lines += ["", "| ceiling (same run) | median s (min-max) | server CPU s | gg-s3-sync median / ceiling |",
                  "|---|---|---|---|"]
        for what, scenario in (("GET", "small-first"), ("LIST", "small-noop"), ("GET", "large"), ("GET", "ten")):
            rows = [x for x in self.ceilings if x["what"] == what and x["scenario"] == scenario]
            if not rows:
                continue
            m, lo, hi = self.stats(rows, "wall")
            gg = summary.get(f"{scenario}/gg-s3-sync", {}).get("wall")
            label = {"LIST": "bare LIST requests (s5cmd ls)", "GET": "raw parallel GETs (curl)"}[what]
            server = self.stats(rows, "server_cpu")[0]
            lines.append(f"| {label}, {scenario} | {m:.2f} ({lo:.2f}-{hi:.2f}) | {server:.2f} | "
                         f"{'x%.2f' % (gg / m) if gg and m else ''} |")
        text = "\n".join(lines) + "\n"
        print("\n" + text)
        if a.out:
            open(a.out, "w").write(text)
        if a.json:
            json.dump({"args": vars(a), "samples": self.samples, "ceilings": self.ceilings},
                      open(a.json, "w"), indent=1)
        if a.chart:
            self.chart(a.chart)

    def chart(self, path):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        tools = [t for t in self.tools if any(x["tool"] == t for x in self.samples)]
        scenarios = self.scenarios
        fig, axes = plt.subplots(2, 1, figsize=(10, 7.5))
        width = 0.8 / len(tools)
        colors = {"gg-s3-sync": "#d9480f", "aws-cli": "#868e96", "s5cmd": "#1c7ed6", "rclone": "#37b24d"}
        for ax, key, label in ((axes[0], "wall", "wall time, s (median, min-max)"),
                               (axes[1], "rss", "peak RSS, MiB (median, min-max)")):
            for i, tool in enumerate(tools):
                meds, errs = [], [[], []]
                for scenario in scenarios:
                    rows = [x for x in self.samples if x["scenario"] == scenario and x["tool"] == tool]
                    m, lo, hi = self.stats(rows, key) if rows else (0, 0, 0)
                    meds.append(m)
                    errs[0].append(m - lo)
                    errs[1].append(hi - m)
                xs = [j + (i - (len(tools) - 1) / 2) * width for j in range(len(scenarios))]
                ax.bar(xs, meds, width, yerr=errs, capsize=2, label=tool, color=colors.get(tool))
            ax.set_xticks(range(len(scenarios)))
            ax.set_xticklabels(scenarios)
            ax.set_ylabel(label)
            ax.grid(axis="y", alpha=0.3)
        axes[0].legend(ncol=len(tools))
        a = self.a
        fig.suptitle(f"gg-s3-sync vs aws-cli, s5cmd, rclone: {a.small} x 4 KiB, 1 x {a.large_mib} MiB, "
                     f"{a.ten} x {a.ten_mib} MiB; {a.rounds} rounds")
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        print(f"chart: {path}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes and one round (CI: the harness runs)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--small", type=int, default=10000)
    p.add_argument("--large-mib", type=int, default=256)
    p.add_argument("--ten", type=int, default=10)
    p.add_argument("--ten-mib", type=int, default=100)
    p.add_argument("--only", default="", help="comma-separated tools")
    p.add_argument("--scenarios", default="", help="comma-separated scenarios (default: all)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=PATH[:VAR=VALUE...]",
                   help="another gg-s3-sync build (and environment) to run in the same rounds")
    p.add_argument("--out", help="write the markdown tables here")
    p.add_argument("--json", help="write every sample here")
    p.add_argument("--chart", help="write the PNG chart here")
    for tool in ("gg", "devstack", "python", "s5cmd", "rclone"):
        p.add_argument(f"--{tool}", required=True)
    a = p.parse_args()
    if a.quick:
        a.rounds, a.small, a.large_mib, a.ten, a.ten_mib = 1, 50, 4, 3, 1
    b = Bench(a)
    try:
        b.start()
        b.seed()
        b.run()
        b.report()
    finally:
        try:
            b.stop()
        finally:
            shutil.rmtree(b.work, ignore_errors=True)


if __name__ == "__main__":
    main()
