#!/usr/bin/env python3
"""The measuring half of `scripts/bench scale`: runs every case with repetitions against the
servers scripts/bench started, prints a markdown table and writes it (and the raw samples as
JSON) next to the work directory. Timings are printed, never asserted.

    scale_bench.py WORK KEYHOLE REPS NAIVE_GROUPS

WORK holds keyhole.toml, instance.toml, company/ (from company.py), s3/ (the bucket root of
s3s-fs), s3.log (s3s-fs with RUST_LOG=s3s::service=debug: one "req:" line per request), ldap.env
(what the floor and the naive script need) and, if the DC logs its LDAP requests, samba.log.
"""
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

from bench_run import PHASES, Bench

work, keyhole, reps, naive_groups = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
bench = Bench(work)
company, env, run = bench.company, bench.env, bench.run
empty_bucket, bucket_sizes = bench.empty_bucket, bench.bucket_sizes
facts = json.load(open(f"{company}/facts.json"))
here = os.path.dirname(os.path.abspath(__file__))
results = {}

metrics_file = f"{work}/publish.prom"
publish = [keyhole, "publish", "--force", "--metrics-file", metrics_file]
floor, floor_ldap, floor_homes = bench.floor, bench.floor_ldap, bench.floor_homes

# Who is in which access group (and how many memberships there are), from keyhole's resolution.
# This first read also warms the DC's caches, so the first measured floor is not a cold one.
print("warming up: keyhole members (resolution, memberships)", file=sys.stderr)
groups_of, memberships, resolution_sample = bench.groups_of(keyhole)
print(f"memberships: {memberships:,} ({memberships / facts['users']:.1f} per person)", file=sys.stderr)


# One person in a few access groups changes their authorized_keys between runs (someone who
# has the file: some people of the company have an empty ~/.ssh or no home).
def keys_file(user):
    return f"{company}/homes/{user}/.ssh/authorized_keys"


changer = min((u for u, g in groups_of.items()
               if len(g) >= 2 and u.startswith("emp") and os.path.exists(keys_file(u))),
              key=lambda u: (abs(len(groups_of[u]) - 3), u))
changer_file = keys_file(changer)
original = open(changer_file).read()
fresh_keys = [line.split(" ", 1)[1].rstrip("\n") for line in
              open(f"{os.path.dirname(work)}/../bench-cache/keypool.txt")
              if line.startswith("ed25519 ")][-reps * 2:]
turn = [0]


def change_one_user():
    turn[0] += 1
    with open(changer_file, "w") as f:
        f.write(original + f"{fresh_keys[turn[0] % len(fresh_keys)]} {changer}@new-laptop\n")


# Each repetition runs every case once, in this order: on a shared machine the load moves, and
# interleaving puts the floor and keyhole's runs under the same load, so the ratios of one run
# compare like with like. "plan" runs after the change was published: nothing changed.
print(f"cases: floor (one paged dump of users and groups + every authorized_keys read once, and "
      f"each half alone), publish cold (empty bucket), no-change, one user changed ({changer}, in "
      f"{len(groups_of[changer])} access groups), plan, members", file=sys.stderr)
CASES = [
    ("floor", ["bash", "-c", floor], None, None),
    ("floor: directory", ["bash", "-c", floor_ldap], None, None),
    ("floor: homes", ["bash", "-c", floor_homes], None, None),
    ("publish cold", publish, empty_bucket, metrics_file),
    ("publish no-change", publish, None, metrics_file),
    ("publish one-user-changed", publish, change_one_user, metrics_file),
    ("plan", [keyhole, "plan", "--format", "json"], None, None),
    ("members", [keyhole, "members", "--format", "json"], None, None),
]
for name, *_ in CASES:
    results[name] = []
for repetition in range(reps):
    for name, argv, before, metrics in CASES:
        sample, _ = run(argv, before, metrics)
        results[name].append(sample)
        print(f"  {name}: {sample['wall']:.2f} s, {sample['rss_mb']:.0f} MB, "
              f"ldap {sample['ldap_searches']}, s3 {sample['s3_server']}", file=sys.stderr)
        if name == "publish no-change" and repetition == 0:
            index_bytes, owners_bytes = bucket_sizes()


def diagnose():
    """Where a no-change publish spends its time and memory (DIAGNOSE=1): the gaps between its
    own log lines, peak RSS with glibc limited to 2 malloc arenas, and a perf profile."""
    out = []
    sample, _ = run(publish)
    stamps = re.findall(r"^(\S+Z)\s+\w+ (.*?)(?:\s+\w+=.*)?$", sample["stderr_tail"], re.M)
    sample_full = subprocess.run([keyhole, "publish", "--force"], env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE).stderr.decode()
    from datetime import datetime
    previous = None
    start = time.time()
    for line in sample_full.splitlines():
        m = re.match(r"^(\S+Z)\s+\w+ (.*)$", line)
        if not m:
            continue
        at = datetime.fromisoformat(m.group(1).replace("Z", "+00:00")[:26] + "+00:00")
        if previous:
            out.append(f"  +{(at - previous).total_seconds():6.2f} s  {m.group(2)[:110]}")
        else:
            out.append(f"   {'start':>7}  {m.group(2)[:110]}")
        previous = at
    arenas, _ = run(["env", "MALLOC_ARENA_MAX=2"] + publish)
    out.append(f"no-change publish: {sample['wall']:.2f} s, LDAP searches {sample['ldap_searches']} "
               f"({sample['ranged_reads']} ranged) / DC {sample['ldap_server']}, S3 {sample['s3_server']}")
    out.append(f"peak RSS of a no-change publish: {sample['rss_mb']:.0f} MB; with MALLOC_ARENA_MAX=2: "
               f"{arenas['rss_mb']:.0f} MB")
    members, _ = run([keyhole, "members", "--format", "json"])
    out.append(f"peak RSS of members (directory read + resolution only): {members['rss_mb']:.0f} MB")
    if shutil.which("perf"):
        data = f"{work}/perf.data"
        subprocess.run(["perf", "record", "-F", "499", "-g", "-o", data, keyhole, "publish",
                        "--force"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        report = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children",
                                 "--sort", "dso,symbol", "--percent-limit", "1.5"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL).stdout.decode()
        top = [l for l in report.splitlines() if re.match(r"^\s+\d+\.\d+%", l)]
        out.append("perf (no-change publish, self time by symbol, >= 1.5%):")
        out += ["  " + l.strip()[:150] for l in top[:25]]
    return "\n".join(out)


if os.environ.get("DIAGNOSE"):
    print("diagnosing a no-change publish", file=sys.stderr)
    diagnosis = diagnose()
    print(diagnosis)
    with open(f"{os.path.dirname(work)}/diagnosis-{facts['users']}.txt", "w") as f:
        f.write(diagnosis + "\n")
    if naive_groups == 0:
        sys.exit(0)

# The naive publisher on the first NAIVE_GROUPS access groups, into its own prefix (NAIVE_GROUPS=0:
# not at all).
total_groups = facts["access_groups"]
naive_env_groups = min(naive_groups, total_groups)
if naive_env_groups:
    print(f"naive shell publisher on {naive_env_groups} of {total_groups} access groups",
          file=sys.stderr)
naive_samples = []
for _ in range(1 if naive_env_groups else 0):  # minutes per run: once shows the magnitude
    sample, out = run([f"{here}/naive-publish", f"{company}/naive-policy.tsv", f"{company}/homes",
                       str(naive_env_groups)])
    sample["summary"] = out.decode().strip()
    naive_samples.append(sample)
    print(f"  naive: {sample['wall']:.2f} s ({sample['summary']})", file=sys.stderr)
results["naive (measured part)"] = naive_samples

# authorized-keys on an instance of this company: two access groups, signed index.
print("keyhole authorized-keys (instance side)", file=sys.stderr)
instance_env = dict(env, KEYHOLE_CONFIG=f"{work}/instance.toml")
cache_dir = f"{work}/instance-cache"


def ak_once(cold):
    if cold:
        shutil.rmtree(cache_dir, ignore_errors=True)
    start = time.perf_counter()
    done = subprocess.run([keyhole, "authorized-keys", "ec2-user"], env=instance_env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    elapsed = (time.perf_counter() - start) * 1000
    if done.returncode != 0 or not done.stdout:
        # A miss past fetch_timeout (3 s) serves nothing: counted, not fatal to the bench.
        print(f"  authorized-keys failed: {done.stderr.decode()[-300:]}", file=sys.stderr)
        return None
    return elapsed


ak_once(True)
hits = sorted(x for x in (ak_once(False) for _ in range(200)) if x is not None)
miss_runs = [ak_once(True) for _ in range(max(20, reps * 5))]
misses = sorted(x for x in miss_runs if x is not None) or [float("nan")]
miss_failures = sum(1 for x in miss_runs if x is None)


def median(name, key="wall"):
    return statistics.median(s[key] for s in results[name])


floor_s = median("floor")
naive_measured = statistics.median(s["wall"] for s in naive_samples) if naive_samples else None
naive_total = naive_measured * total_groups / naive_env_groups if naive_samples else None
extrapolated = naive_env_groups < total_groups
keyhole_cold = median("publish cold")

rows = []
for name in ["floor", "floor: directory", "floor: homes", "publish cold", "publish no-change",
             "publish one-user-changed", "plan", "members"]:
    samples = results[name]
    walls = [s["wall"] for s in samples]
    ldap = samples[-1]["ldap_searches"]
    ranged = samples[-1]["ranged_reads"]
    s3 = samples[-1]["s3_server"]
    s3_text = " ".join(f"{k} {v}" for k, v in sorted(s3.items())) or "0"
    writes = samples[-1].get("s3_writes")
    ldap_text = "-" if ldap is None else f"{ldap} ({ranged} ranged)"
    if samples[-1]["ldap_server"]:
        ldap_text += f" / DC {samples[-1]['ldap_server']}"
    rows.append((name, statistics.median(walls), min(walls), max(walls),
                 max(s["rss_mb"] for s in samples), ldap_text, s3_text,
                 "-" if writes is None else str(writes), statistics.median(walls) / floor_s))

out = []
dense = facts.get("density") == "dense"
out.append(f"### {facts['users']:,} users, {facts['access_groups']:,} access groups"
           f"{', dense' if dense else ''} ({reps} repetitions; median, min-max)\n")
out.append(f"Company: {facts['users']:,} users ({facts['disabled']} disabled, {facts['expired']} "
           f"expired, {facts['locked']} locked), {facts['ad_groups']:,} AD groups (largest "
           f"{facts['largest_group']:,} members), {facts['access_groups']:,} access groups, "
           f"{facts['authorized_keys_files']:,} authorized_keys files, {facts['keys']:,} keys; "
           f"**{memberships:,} memberships** ({memberships / facts['users']:.1f} per person); "
           f"index.json {index_bytes:,} bytes ({index_bytes / facts['access_groups']:.0f} per "
           f"access group), owners object {owners_bytes:,} bytes.\n")
out.append("| case | median s | min-max s | peak RSS MB | LDAP searches (keyhole counter) | "
           "S3 requests (s3s-fs log) | S3 writes (keyhole metric) | × floor |")
out.append("|---|---:|---:|---:|---|---|---:|---:|")
for name, med, lo, hi, rss, ldap, s3, writes, ratio in rows:
    out.append(f"| {name} | {med:.2f} | {lo:.2f}-{hi:.2f} | {rss:.0f} | {ldap} | {s3} | {writes} "
               f"| {ratio:.2f} |")
if naive_samples:
    naive_note = (f"measured on {naive_env_groups} of {total_groups} access groups in "
                  f"{naive_measured:.1f} s, extrapolated linearly" if extrapolated else
                  f"all {total_groups} access groups")
    out.append(f"| naive shell publisher | {naive_total:.1f} | ({naive_note}) | "
               f"{max(s['rss_mb'] for s in naive_samples):.0f} (per process) | "
               f"{naive_samples[-1]['summary']} | "
               f"{' '.join(f'{k} {v}' for k, v in sorted(naive_samples[-1]['s3_server'].items()))} "
               f"| - | {naive_total / floor_s:.1f} |")
out.append("")
naive_ratios = (f"; naive / cold publish = {naive_total / keyhole_cold:.1f}; naive / no-change "
                f"publish = {naive_total / median('publish no-change'):.1f}" if naive_samples else "")
out.append(f"Ratios: cold publish / floor = {keyhole_cold / floor_s:.2f}; no-change publish / floor "
           f"= {median('publish no-change') / floor_s:.2f}{naive_ratios}.\n")

# The phases keyhole logs, median per phase, beside the floor's two halves.
out.append("Phases (median s; keyhole's own log lines \"prepared the plan\" and \"published\"; "
           "`plan` includes fetching the published files of changed groups):\n")
out.append("| case | directory | resolve | homes | S3 read | plan | S3 write | prune | total | "
           "S3 bytes read | S3 bytes written | peak RSS MB |")
out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
out.append(f"| floor | {median('floor: directory'):.2f} | - | {median('floor: homes'):.2f} | - | - "
           f"| - | - | {floor_s:.2f} | - | - | {max(s['rss_mb'] for s in results['floor']):.0f} |")


def phase(name, key):
    values = [s["phases"][key] for s in results[name] if key in s["phases"]]
    return f"{statistics.median(values):.2f}" if values else "-"


def figure(name, key):
    values = [s[key] for s in results[name] if s.get(key) is not None]
    return f"{int(statistics.median(values)):,}" if values else "-"


for name in ["publish cold", "publish no-change", "publish one-user-changed", "plan"]:
    cells = " | ".join(phase(name, key) for key in PHASES)
    out.append(f"| {name} | {cells} | {median(name):.2f} | {figure(name, 's3_bytes_read')} | "
               f"{figure(name, 's3_bytes_written')} | "
               f"{max(s['rss_mb'] for s in results[name]):.0f} |")
out.append("")
no_change_read = statistics.median(s["s3_bytes_read"] for s in results["publish no-change"])
out.append(f"S3 bytes read by a no-change publish: {no_change_read:,.0f} = "
           f"{no_change_read / facts['access_groups']:.0f} per access group (target ≤ 300).\n")
out.append(f"`authorized-keys` (2 access groups, signed index, process start included): "
           f"cache hit median {statistics.median(hits):.2f} ms (p99 "
           f"{hits[int(len(hits) * 0.99) - 1]:.2f} ms, {len(hits)} runs); cold miss median "
           f"{statistics.median(misses):.2f} ms ({len(miss_runs)} runs, {miss_failures} past the 3 s "
           f"fetch_timeout).\n")
text = "\n".join(out)
print(text)
# Next to the work directory, which the next run of the same size replaces.
kept = f"{os.path.dirname(work)}/result-{facts['users']}{'-dense' if dense else ''}"
with open(f"{kept}.md", "w") as f:
    f.write(text + "\n")
with open(f"{kept}.json", "w") as f:
    json.dump({"facts": facts, "results": results, "hits_ms": hits, "misses_ms": misses,
               "naive_total": naive_total, "naive_groups": naive_env_groups,
               "memberships": memberships, "index_bytes": index_bytes,
               "owners_bytes": owners_bytes}, f, indent=1)
