"""What the measuring halves of `scripts/bench scale` and `scripts/bench dense` share: running a
command under /usr/bin/time against the servers scripts/lib/bench-scale started, with what the
servers logged meanwhile and what keyhole reported (its phase times, counters and metrics), the
floor every ratio divides by, and the bucket's bookkeeping.

WORK (the bench's work directory) holds keyhole.toml, company/ (from company.py), s3/ (the bucket
root of s3s-fs), s3.log (s3s-fs with RUST_LOG=s3s::service=debug: one "req:" line per request),
ldap.env (what the floor needs) and, if the DC logs its LDAP requests (DC_LOG_LEVEL=10),
samba.log.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

PHASES = ["directory_s", "resolve_s", "homes_s", "s3_read_s", "plan_s", "s3_write_s", "prune_s"]


def log_size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def log_since(path, offset):
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def s3_requests(text):
    """Requests s3s-fs saw, by method: its own count, independent of keyhole's."""
    counts = {}
    for method in re.findall(r"req: Request \{ method: ([A-Z]+)", text):
        counts[method] = counts.get(method, 0) + 1
    return counts


def ldap_server_searches(text):
    """Search requests the DC logged (only when it runs with a debug level that logs them)."""
    return len(re.findall(r"ldapsrv_SearchRequest", text))


def phase_times(stderr):
    """The phase durations keyhole logs: "prepared the plan" (directory, resolve, homes, S3 read,
    plan) and "published" (S3 writes up to the commit, then the prune; present only when
    something was written)."""
    phases = {}
    for name, value in re.findall(r"\b(\w+_s)=([0-9.eE+-]+)", stderr):
        if name in PHASES:
            phases[name] = float(value)
    return phases


class Bench:
    """The environment of one bench run: keyhole's settings, the floor's LDAP variables."""

    def __init__(self, work):
        self.work = work
        self.company = f"{work}/company"
        self.bucket_dir = f"{work}/s3/keyhole-bench"
        self.env = dict(os.environ, KEYHOLE_CONFIG=f"{work}/keyhole.toml", RUST_LOG="info")
        self.env.update(line.rstrip("\n").split("=", 1) for line in open(f"{work}/ldap.env"))
        # The floor: one paged dump of every user and group with the attributes keyhole reads,
        # and every authorized_keys read once. What any correct publisher must at least do.
        self.floor = (
            "ldapsearch -LLL -x -H \"$LDAP_URI\" -D \"$BIND_DN\" -y \"$BIND_PW_FILE\" "
            "-E pr=1000/noprompt -b \"$BASE_DN\" "
            "'(|(&(objectCategory=person)(objectClass=user))(objectClass=group))' "
            "sAMAccountName userAccountControl accountExpires lockoutTime uidNumber "
            "unixHomeDirectory primaryGroupID objectSid member >/dev/null && "
            f"find {self.company}/homes -name authorized_keys -print0 | xargs -0 cat >/dev/null")
        self.floor_ldap, self.floor_homes = self.floor.split(" && ")

    def run(self, argv, before=None, metrics=None):
        """Runs `argv` (after `before`), returning a sample (wall time, peak RSS, what the
        servers logged, keyhole's phases and, with `metrics`, its metrics file) and the stdout.
        A run that exits with anything but 0, 1 or 2 ends the bench."""
        if before:
            before()
        s3_offset = log_size(f"{self.work}/s3.log")
        dc_offset = log_size(f"{self.work}/samba.log")
        with tempfile.NamedTemporaryFile() as timing:
            start = time.perf_counter()
            done = subprocess.run(["/usr/bin/time", "-v", "-o", timing.name] + argv, env=self.env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            wall = time.perf_counter() - start
            rss = int(re.search(rb"Maximum resident set size \(kbytes\): (\d+)",
                                open(timing.name, "rb").read()).group(1))
        time.sleep(0.05)  # let the servers' log lines land
        stderr = done.stderr.decode(errors="replace")
        if done.returncode not in (0, 1, 2):
            sys.exit(f"{' '.join(argv)} exited {done.returncode}:\n{stderr[-3000:]}")
        searches = re.findall(r"searches=(\d+)", stderr)
        ranged = re.findall(r"ranged_reads=(\d+)", stderr)
        sample = {
            "wall": wall, "rss_mb": rss / 1024, "exit": done.returncode,
            "ldap_searches": int(searches[-1]) if searches else None,
            "ranged_reads": int(ranged[-1]) if ranged else None,
            "s3_server": s3_requests(log_since(f"{self.work}/s3.log", s3_offset)),
            "ldap_server": ldap_server_searches(log_since(f"{self.work}/samba.log", dc_offset)),
            "stderr_tail": stderr[-600:],
            "phases": phase_times(stderr),
        }
        if metrics and os.path.exists(metrics):
            m = dict(re.findall(r"^(keyhole_publish_\w+) (\S+)$", open(metrics).read(), re.M))
            sample["s3_writes"] = int(float(m["keyhole_publish_s3_writes"]))
            sample["metrics_ldap_searches"] = int(float(m["keyhole_publish_ldap_searches"]))
            sample["groups_changed"] = int(float(m["keyhole_publish_groups_changed"]))
            sample["s3_bytes_read"] = int(float(m["keyhole_publish_s3_read_bytes"]))
            sample["s3_bytes_written"] = int(float(m["keyhole_publish_s3_written_bytes"]))
        return sample, done.stdout

    def empty_bucket(self):
        for entry in os.listdir(self.bucket_dir):
            path = os.path.join(self.bucket_dir, entry)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)

    def bucket_sizes(self):
        """index.json and the owners object it names, in bytes (as s3s-fs stores them)."""
        envelope = json.load(open(f"{self.bucket_dir}/ssh/index.json"))
        index = json.loads(envelope["index"])
        owners = index.get("owners")
        owners_path = f"{self.bucket_dir}/ssh/_keyhole/owners/{owners}.json"
        return (os.path.getsize(f"{self.bucket_dir}/ssh/index.json"),
                os.path.getsize(owners_path) if owners and os.path.exists(owners_path) else 0)

    def groups_of(self, keyhole):
        """Who is in which access group, from keyhole's resolution (`members`): the access
        groups of each person, the number of memberships and the sample of that run (which
        also warms the DC's caches, so the first measured floor is not a cold one)."""
        sample, out = self.run([keyhole, "members", "--format", "json"])
        resolution = json.loads(out)
        groups_of = {}
        for group, membership in resolution["access_groups"].items():
            for member in membership["users"]:
                groups_of.setdefault(member["name"], []).append(group)
        memberships = sum(len(m["users"]) for m in resolution["access_groups"].values())
        return groups_of, memberships, sample
