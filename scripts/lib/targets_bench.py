#!/usr/bin/env python3
"""The measuring half of `scripts/bench dense`: issue 26's target rows on the production-shaped
company (scripts/lib/company.py `production`), ratios measured in one run against the floor.
Timings are printed, never asserted.

    targets_bench.py WORK KEYHOLE REPS

Each repetition runs every case once, in this order, so the load of a shared machine moves them
all alike:

- floor: one paged `ldapsearch` dump of users and groups + `cat` of every authorized_keys;
- publish cold: bucket and publisher state emptied, `--full` when `keyhole publish --help` lists
  it (before issue 26 every run is a full run);
- plain upload: the objects that cold publish left in the bucket, downloaded beforehand
  (unmeasured) and uploaded to another prefix of the same s3s-fs by a plain parallel client, the
  AWS CLI (`aws s3 cp --recursive`, 10 requests in flight by default; keyhole has 8). The cold
  row divides by floor + this;
- plain client start: one `aws s3 ls` of an empty prefix, the CLI's fixed cost (printed, not
  subtracted);
- publish no-change: a normal run after the cold one;
- publish one person disabled: a typical person (in the median number of access groups among the
  people with access, with an authorized_keys file) is disabled in AD (userAccountControl, as
  Administrator over LDAPS) before the run; enabled again and published (unmeasured) after it;
- publish full: `--full` (a normal run when the flag does not exist yet), nothing changed.

Peak RSS from /usr/bin/time; S3 bytes read from keyhole's metrics file; S3 requests from
s3s-fs's log. Results: WORK/../result-USERS-production-targets.{md,json}.
"""
import json
import os
import re
import shutil
import statistics
import subprocess
import sys

from bench_run import PHASES, Bench

work, keyhole, reps = sys.argv[1], sys.argv[2], int(sys.argv[3])
bench = Bench(work)
facts = json.load(open(f"{bench.company}/facts.json"))
metrics_file = f"{work}/publish.prom"
state_dir = f"{work}/state"
staging = f"{work}/plain-upload"
ldap = dict(line.rstrip("\n").split("=", 1) for line in open(f"{work}/ldap.env"))
admin_dn = f"CN=Administrator,CN=Users,{ldap['BASE_DN']}"
admin_password_file = f"{work}/dc/admin-password"

help_text = subprocess.run([keyhole, "publish", "--help"], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT).stdout.decode()
has_full = re.search(r"^\s*(-\w, )?--full\b(?!-)", help_text, re.M) is not None
publish = [keyhole, "publish", "--force", "--metrics-file", metrics_file]
publish_full = publish + (["--full"] if has_full else [])


def empty_bucket_and_state():
    """A cold publish: nothing in the bucket, nothing remembered beside the lock file."""
    bench.empty_bucket()
    for entry in os.listdir(state_dir):
        if entry == "publish.lock":
            continue
        path = os.path.join(state_dir, entry)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def aws(*args, check=True):
    """The AWS CLI against the bench's s3s-fs (its endpoint and credentials are in the env)."""
    done = subprocess.run(["aws", "--endpoint-url", ldap["S3_ENDPOINT"], "--region", "us-east-1",
                           *args], env=bench.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if check and done.returncode != 0:
        sys.exit(f"aws {' '.join(args)} failed: {done.stderr.decode(errors='replace')[-2000:]}")
    return done


def stage_cold_objects():
    """Downloads what the last cold publish wrote (every object under ssh/), for the plain
    client to upload: the same objects, the same bytes."""
    shutil.rmtree(staging, ignore_errors=True)
    aws("s3", "cp", "--recursive", "--quiet", "s3://keyhole-bench/ssh/", staging)
    count = sum(len(files) for _, _, files in os.walk(staging))
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(staging) for f in fs)
    return count, size


plain_upload = ["aws", "--endpoint-url", ldap["S3_ENDPOINT"], "--region", "us-east-1", "s3", "cp",
                "--recursive", "--quiet", staging, "s3://keyhole-bench/plain-upload/"]
# What the CLI costs before it uploads anything (Python start-up, botocore's models): one
# request, so the reader can tell the client's fixed cost from the upload.
plain_start = ["aws", "--endpoint-url", ldap["S3_ENDPOINT"], "--region", "us-east-1", "s3", "ls",
               "s3://keyhole-bench/nothing-here/"]


def ldap_tool(tool, *args, stdin=None):
    done = subprocess.run([tool, "-x", "-H", ldap["LDAP_URI"], "-D", admin_dn, "-y",
                           admin_password_file, *args], input=stdin, env=bench.env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if done.returncode != 0:
        sys.exit(f"{tool} as Administrator failed: {done.stderr.decode(errors='replace')}")
    return done.stdout.decode()


def user_account_control(user):
    out = ldap_tool("ldapsearch", "-LLL", "-b", f"CN={user},CN=Users,{ldap['BASE_DN']}", "-s",
                    "base", "userAccountControl")
    return int(next(line.split(": ")[1] for line in out.splitlines()
                    if line.startswith("userAccountControl: ")))


def set_user_account_control(user, value):
    ldap_tool("ldapmodify", stdin=(f"dn: CN={user},CN=Users,{ldap['BASE_DN']}\n"
                                   f"changetype: modify\nreplace: userAccountControl\n"
                                   f"userAccountControl: {value}\n").encode())


print("warming up: keyhole members (resolution, memberships), then the floor twice",
      file=sys.stderr)
groups_of, memberships, _ = bench.groups_of(keyhole)
# The first measured floor should not pay for the freshly started DC's cold caches (members
# reads less than the floor's dump): two unmeasured floors warm it.
for _ in range(2):
    warm, _ = bench.run(["bash", "-c", bench.floor])
    print(f"  floor (warm-up): {warm['wall']:.2f} s", file=sys.stderr)
counts = sorted(len(g) for g in groups_of.values())
median_groups = counts[len(counts) // 2]


def keys_file(user):
    return f"{bench.company}/homes/{user}/.ssh/authorized_keys"


typical = min(u for u, g in groups_of.items()
              if len(g) == median_groups and u.startswith("emp") and os.path.exists(keys_file(u)))
enabled_uac = user_account_control(typical)


def disable_typical():
    set_user_account_control(typical, enabled_uac | 2)


def enable_typical():
    set_user_account_control(typical, enabled_uac)
    bench.run(publish)


CASES = [
    ("floor", ["bash", "-c", bench.floor], None, None),
    ("publish cold", publish_full, empty_bucket_and_state, metrics_file),
    ("plain upload of the cold objects", plain_upload, None, None),
    ("plain client start (one `aws s3 ls`)", plain_start, None, None),
    ("publish no-change", publish, None, metrics_file),
    ("publish one person disabled", publish, disable_typical, metrics_file),
    ("publish full", publish_full, None, metrics_file),
]
print(f"cases: {', '.join(name for name, *_ in CASES)}; the disabled person: {typical}, in "
      f"{median_groups} access groups (the median); --full {'listed' if has_full else 'not listed: every run is full'}",
      file=sys.stderr)
results = {name: [] for name, *_ in CASES}
staged = None
for repetition in range(reps):
    for name, argv, before, metrics in CASES:
        if name == "plain upload of the cold objects":
            staged = stage_cold_objects()
            aws("s3", "rm", "--recursive", "--quiet", "s3://keyhole-bench/plain-upload/")
        sample, _ = bench.run(argv, before, metrics)
        results[name].append(sample)
        if name == "publish one person disabled":
            enable_typical()
        if name == "publish no-change" and repetition == 0:
            index_bytes, owners_bytes = bench.bucket_sizes()
        print(f"  {name}: {sample['wall']:.2f} s, {sample['rss_mb']:.0f} MB, "
              f"s3 {sample['s3_server']}, read {sample.get('s3_bytes_read', '-')} bytes",
              file=sys.stderr)


def median(name, key="wall"):
    return statistics.median(s[key] for s in results[name])


floor_s = median("floor")
upload_s = median("plain upload of the cold objects")
# Each repetition's cold baseline is its own floor + its own upload; the median of the sums.
cold_floor = statistics.median(f["wall"] + u["wall"] for f, u in
                               zip(results["floor"], results["plain upload of the cold objects"]))
TARGETS = {
    "publish no-change": "≤ 0.5×" if facts["users"] < 50000 else "≤ 0.25×",
    "publish one person disabled": "≤ 0.7×",
    "publish full": "≤ 1.3×",
    "publish cold": "≤ 1.3× (floor + plain upload)",
}

out = []
shape = (f"{facts['users']:,} people ({facts['disabled']} disabled, {facts['expired']} expired, "
         f"{facts['locked']} locked), {facts['ad_groups']:,} AD groups, "
         f"{facts['access_groups']:,} access groups, **{memberships:,} memberships** "
         f"({memberships / facts['users']:.1f} a person), {facts['authorized_keys_files']:,} "
         f"authorized_keys files, {facts['keys']:,} keys, {facts['shared_keys']} keys shared "
         f"between two people's files; index.json {index_bytes:,} bytes, owners object "
         f"{owners_bytes:,} bytes; the cold publish wrote {staged[0]:,} objects, "
         f"{staged[1]:,} bytes")
out.append(f"### {facts['users']:,} people, production shape ({reps} repetitions; median, "
           f"min–max)\n")
out.append(f"Company: {shape}. Samba at its default log level; `--full` "
           f"{'listed by `keyhole publish --help`: cold and full runs pass it' if has_full else 'not listed by `keyhole publish --help`: every run reads everything'}"
           f". The disabled person: {typical}, in {median_groups} access groups (the median among "
           f"the {len(groups_of):,} people with access).\n")
out.append("| case | median s | min–max s | peak RSS MB | S3 requests (s3s-fs log) | S3 bytes "
           "read | × floor | target |")
out.append("|---|---:|---:|---:|---|---:|---:|---|")
for name, *_ in CASES:
    samples = results[name]
    walls = [s["wall"] for s in samples]
    s3 = samples[-1]["s3_server"]
    s3_text = " ".join(f"{k} {v}" for k, v in sorted(s3.items())) or "0"
    read = [s["s3_bytes_read"] for s in samples if s.get("s3_bytes_read") is not None]
    read_text = f"{int(statistics.median(read)):,}" if read else "–"
    if name == "publish cold":
        ratio = f"**{statistics.median(walls) / cold_floor:.2f}** (of floor + upload, {cold_floor:.2f} s)"
    elif name.startswith("publish"):
        ratio = f"**{statistics.median(walls) / floor_s:.2f}**"
    else:
        ratio = f"{statistics.median(walls) / floor_s:.2f}"
    out.append(f"| {name} | {statistics.median(walls):.2f} | {min(walls):.2f}–{max(walls):.2f} | "
               f"{max(s['rss_mb'] for s in samples):.0f} | {s3_text} | {read_text} | {ratio} | "
               f"{TARGETS.get(name, '')} |")
out.append("")
# On a shared machine the load moves between repetitions; each repetition's own ratio (its
# run against its floor, measured minutes apart at most) shows how much of the median ratio
# is the machine.
per_rep = []
for name, *_ in CASES:
    if not name.startswith("publish"):
        continue
    ratios = []
    for i, sample in enumerate(results[name]):
        base = results["floor"][i]["wall"]
        if name == "publish cold":
            base += results["plain upload of the cold objects"][i]["wall"]
        ratios.append(sample["wall"] / base)
    per_rep.append(f"{name} {' / '.join(f'{r:.2f}' for r in ratios)}")
out.append(f"Ratios per repetition (each against its own floor): {'; '.join(per_rep)}.\n")
no_change_read = median("publish no-change", "s3_bytes_read")
peak = max(max(s["rss_mb"] for s in results[name]) for name in results if name.startswith("publish"))
out.append(f"Peak RSS of any publish: **{peak:.0f} MB** (target ≤ "
           f"{'100' if facts['users'] < 50000 else '400'} MB). S3 bytes read by a no-change "
           f"publish: **{no_change_read:,.0f}** = {no_change_read / facts['access_groups']:.0f} "
           f"per access group (target ≤ 300).\n")
out.append("Phases (median s, from keyhole's own log lines):\n")
out.append("| case | directory | resolve | homes | S3 read | plan | S3 write | prune |")
out.append("|---|---:|---:|---:|---:|---:|---:|---:|")
for name, *_ in CASES:
    if not name.startswith("publish"):
        continue
    cells = []
    for key in PHASES:
        values = [s["phases"][key] for s in results[name] if key in s["phases"]]
        cells.append(f"{statistics.median(values):.2f}" if values else "–")
    out.append(f"| {name} | {' | '.join(cells)} |")
out.append("")
text = "\n".join(out)
print(text)
kept = f"{os.path.dirname(work)}/result-{facts['users']}-production-targets"
with open(f"{kept}.md", "w") as f:
    f.write(text + "\n")
with open(f"{kept}.json", "w") as f:
    json.dump({"facts": facts, "results": results, "memberships": memberships,
               "index_bytes": index_bytes, "owners_bytes": owners_bytes,
               "staged_objects": staged, "typical": typical, "median_groups": median_groups,
               "has_full": has_full}, f, indent=1)
