#!/usr/bin/python3
"""A synthetic company for scripts/bench: directory fixture, policy, homes with unique keys.

    company.py keys POOL COUNT          make sure POOL holds COUNT distinct real public keys
    company.py build  USERS POOL OUT [sparse|dense|production]
                                        write OUT/directory.json (scripts/samba-dc populate),
                                        OUT/access-groups.toml, OUT/naive-policy.tsv (the same
                                        policy as lines a shell script can read), OUT/homes/,
                                        OUT/locked.txt (accounts the bench locks with bad binds)
                                        and OUT/facts.json (counts, for the report)

Deterministic for a given USERS (seeded), so the DC built from it can be cached and reused.

`production` (scripts/bench dense, issue 26) is the shape measured on a production directory:
`dense` below with fewer, larger AD groups (N/15 + 8: ~680 at 10k people, so ~330k memberships
from the same 1,000 access groups) and some keys shared: ~0.5% of people with a file also list
the first key of someone whose file was written before theirs (a key copied from a colleague or
a shared deploy key). keyhole drops a key two people claim, so both lose it, and the published
owners object records it as contested: what makes a run read more than the index.

`dense` (scripts/bench scale with DENSITY=dense) keeps everything below and makes it a realistic
density, memberships ≈ 30 × people (10k people: 1,000 access groups, ~330k memberships): "All
Staff" holds everyone directly; a second [everywhere] group "SRE" (40 people); five org groups
org-0..org-4, each holding a fifth of the divisions (so ~20% of people, three nestings deep); and
a fixed number of access groups (not a share, so memberships stay linear in people) granted to
big groups: 8 to "Domain Users" (everyone, only through primaryGroupID: AD lists no member
values for it), 8 to "All Staff", 33 to an org group (the default shape's random "All Staff"
picks become divisions). The rest is the long tail of teams, departments and divisions.

The shape, for N users: N/5 AD groups, of which ~60% teams (users), ~30% departments (teams +
a few users), ~10% divisions (departments; one nesting cycle), plus "All Staff" holding
max(1600, N/5) users directly (so AD must answer it with member;range= slices), "Linux Admins"
(the [everywhere] group), a contact and a computer as members that must be ignored; 2% of users
disabled, 1% expired, 0.2% locked, 1% with a primary group; N/10 access groups naming 1-3 groups
and 0-2 users. Keys: 1-3 per user (ed25519, ecdsa-p256, rsa-2048, sk-ssh-ed25519), ~10% with
options (one forbidden environment= among them), some comment lines; 4% of users have no
authorized_keys, 1% no home at all.

Keys are real (generated with the `cryptography` package, the RSA ones are the slow part) and,
except in `production`, each is used by exactly one person: keyhole drops a key that two people
claim. The pool is a
cache (one "type base64" per line) kept between runs.
"""
import json
import os
import random
import sys
from base64 import b64decode, b64encode
from concurrent.futures import ProcessPoolExecutor

KINDS = ["ed25519"] * 70 + ["ecdsa"] * 16 + ["rsa"] * 6 + ["sk"] * 8
OPTIONS = [
    'from="10.0.0.0/8,192.168.0.0/16"',
    "no-port-forwarding,no-agent-forwarding,no-X11-forwarding",
    'command="/usr/bin/rsync --server",no-pty',
    "restrict,pty",
    'from="10.1.2.0/24",no-agent-forwarding',
]
# 100 ns intervals since 1601: 2020-01-01, long past.
EXPIRED = 132223104000000000


def ssh_string(data):
    return len(data).to_bytes(4, "big") + data


def make_keys(args):
    kind, count = args
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    def openssh(public):
        return public.public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        ).decode()

    out = []
    for _ in range(count):
        if kind == "ed25519":
            out.append(openssh(ed25519.Ed25519PrivateKey.generate().public_key()))
        elif kind == "ecdsa":
            out.append(openssh(ec.generate_private_key(ec.SECP256R1()).public_key()))
        elif kind == "rsa":
            # Two 1024-bit primes: the raw material for rsa_moduli().
            numbers = rsa.generate_private_key(65537, 2048).private_numbers()
            out += [numbers.p, numbers.q]
        else:
            # A FIDO key's public half is an ed25519 point plus the application string; the
            # point comes from a real ed25519 key.
            raw = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            kind_name = b"sk-ssh-ed25519@openssh.com"
            blob = ssh_string(kind_name) + ssh_string(raw) + ssh_string(b"ssh:")
            out.append(f"{kind_name.decode()} {b64encode(blob).decode()}")
    return kind, out


def rsa_moduli(primes):
    """Every product of two distinct primes from `primes`, in an order that only grows as
    primes are added: k primes give k(k-1)/2 distinct 2048-bit moduli. Generating a real RSA
    key costs ~1 s on a busy 2-core machine; this makes thousands from ~60 primes. Each
    modulus is a true RSA modulus (p*q), so keyhole parses, sizes and fingerprints it like any
    other; that the factors are shared between keys matters to nobody but an attacker."""
    for j in range(1, len(primes)):
        for i in range(j):
            n = primes[i] * primes[j]
            if n.bit_length() == 2048:
                blob = ssh_string(b"ssh-rsa") + mpint(65537) + mpint(n)
                yield f"ssh-rsa {b64encode(blob).decode()}"


def mpint(value):
    data = value.to_bytes(value.bit_length() // 8 + 1, "big")
    return ssh_string(data)


def pool_load(path):
    pool = {k: [] for k in set(KINDS)}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                kind, key = line.rstrip("\n").split(" ", 1)
                pool[kind].append(key)
    return pool


def pool_need(count):
    """Keys of each kind needed for `count` keys drawn with the KINDS mix (with slack)."""
    need = {k: 0 for k in set(KINDS)}
    for kind in set(KINDS):
        need[kind] = int(count * KINDS.count(kind) / len(KINDS) * 1.15) + 20
    return need


def cmd_keys(path, count):
    pool = pool_load(path)
    need = pool_need(count)
    primes_path = path + ".primes"
    primes = []
    if os.path.exists(primes_path):
        with open(primes_path) as f:
            primes = [int(line) for line in f if line.strip()]
    jobs = []
    for kind, n in need.items():
        missing = n - len(pool[kind])
        if kind == "rsa":
            # k primes give k(k-1)/2 moduli; each key job yields two primes.
            k = len(primes)
            while k * (k - 1) // 2 < n:
                k += 2
            missing = (k - len(primes)) // 2
            while missing > 0:
                jobs.append(("rsa", min(2, missing)))
                missing -= 2
            continue
        step = 500
        while missing > 0:
            jobs.append((kind, min(step, missing)))
            missing -= step
    if not jobs:
        return
    if not jobs:
        return
    total = sum(n for _, n in jobs)
    print(f"company: generating {total} keys into {path}", file=sys.stderr)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 2) as executor, open(path, "a") as f:
        for kind, keys in executor.map(make_keys, jobs):
            if kind == "rsa":
                primes += keys
                continue
            for key in keys:
                f.write(f"{kind} {key}\n")
            f.flush()
    with open(primes_path, "w") as f:
        f.write("".join(f"{p}\n" for p in primes))
    with open(path, "a") as f:
        for key in list(rsa_moduli(primes))[len(pool["rsa"]):]:
            f.write(f"rsa {key}\n")


def cmd_build(users_count, pool_path, out, shape="sparse"):
    dense = shape in ("dense", "production")
    rng = random.Random(users_count)
    # Dense choices draw from their own generator, so the default company stays as it was (same
    # fixture, same cached DC).
    dense_rng = random.Random(users_count * 31 + 7)
    pool = pool_load(pool_path)
    cursor = {k: 0 for k in pool}

    def take(kind):
        i = cursor[kind]
        if i >= len(pool[kind]):
            sys.exit(f"company: key pool {pool_path} has too few {kind} keys; run `keys` first")
        cursor[kind] += 1
        return pool[kind][i]

    users = []
    for i in range(users_count):
        name = f"emp{i:06d}"
        u = {"name": name, "uid_number": 100000 + i, "unix_home": f"/home/{name}"}
        r = rng.random()
        if r < 0.02:
            u["disabled"] = True
        elif r < 0.03:
            u["expires"] = EXPIRED
        users.append(u)
    names = [u["name"] for u in users]
    active = [u["name"] for u in users if not u.get("disabled") and not u.get("expires")]
    locked = rng.sample(active, max(2, users_count // 500))

    # The production shape has fewer, larger groups: a team of ~25, not ~8.
    group_count = max(10, users_count // (15 if shape == "production" else 5))
    teams = [f"team-{i:05d}" for i in range(int(group_count * 0.6))]
    departments = [f"dept-{i:04d}" for i in range(int(group_count * 0.3))]
    divisions = [f"div-{i:03d}" for i in range(group_count - len(teams) - len(departments) - 2)]
    members = {g: [] for g in teams + departments + divisions}
    # Every user in one team, a third of them in a second one.
    shuffled = names[:]
    rng.shuffle(shuffled)
    for i, name in enumerate(shuffled):
        members[teams[i % len(teams)]].append(name)
        if rng.random() < 0.33:
            members[rng.choice(teams)].append(name)
    for t in teams:
        members[t] = sorted(set(members[t]))
    for i, t in enumerate(teams):
        members[departments[i % len(departments)]].append(t)
    for d in departments:
        members[d].extend(rng.sample(names, 2))
    for i, d in enumerate(departments):
        members[divisions[i % len(divisions)]].append(d)
    # A nesting cycle: keyhole must terminate and count each person once.
    if len(divisions) >= 2:
        members[divisions[0]].append(divisions[1])
        members[divisions[1]].append(divisions[0])
    members[teams[0]] += ["contact-printer", "pc-build01"]
    big = sorted(rng.sample(names, min(users_count, max(1600, users_count // 5))))
    members["All Staff"] = big
    admins = rng.sample(active, 15)
    members["Linux Admins"] = admins
    orgs = []
    if dense:
        big = names[:]
        members["All Staff"] = big
        members["SRE"] = sorted(dense_rng.sample(active, 40))
        orgs = [f"org-{i}" for i in range(5)]
        for i, d in enumerate(divisions):
            members.setdefault(orgs[i % len(orgs)], []).append(d)

    primary = rng.sample([n for n in names if n not in admins], users_count // 100)
    team_of = {}
    for t in teams:
        for m in members[t]:
            team_of.setdefault(m, t)
    for u in users:
        if u["name"] in primary:
            u["primary_group"] = team_of[u["name"]]

    fixture = {
        "users": users,
        "groups": [{"name": g, "members": m} for g, m in members.items()],
        "contacts": ["contact-printer"],
        "computers": ["pc-build01"],
    }

    access_groups = {}
    for i in range(max(3, users_count // 10)):
        groups = []
        for _ in range(rng.choice([1, 1, 2, 3])):
            r = rng.random()
            if r < 0.6:
                groups.append(rng.choice(teams))
            elif r < 0.93:
                groups.append(rng.choice(departments))
            elif r < 0.995:
                groups.append(rng.choice(divisions))
            else:
                groups.append("All Staff")
        direct = rng.sample(names, rng.choice([0, 0, 1, 2]))
        access_groups[f"ag-{i:04d}"] = (sorted(set(groups)), sorted(direct))
    if dense:
        # A fixed number of access groups for everyone (a share would grow as people squared).
        for name, (groups, direct) in access_groups.items():
            if "All Staff" in groups:
                groups = [g for g in groups if g != "All Staff"] + [dense_rng.choice(divisions)]
                access_groups[name] = (sorted(set(groups)), direct)
        # The production shape's long tail is denser (larger teams): fewer big grants keep its
        # memberships at ~33 a person.
        everyone, orgs_granted = (6, 25) if shape == "production" else (8, 33)
        picked = dense_rng.sample(sorted(access_groups)[1:], 2 * everyone + orgs_granted)
        for i, name in enumerate(picked):
            big_group = ("Domain Users" if i < everyone else "All Staff" if i < 2 * everyone
                         else dense_rng.choice(orgs))
            groups, direct = access_groups[name]
            access_groups[name] = (sorted(set(groups + [big_group])), direct)
    # Names the policy has and AD does not: reported, not fatal.
    access_groups["ag-0000"][1].append("emp-gone")
    denied = rng.sample(active, 2)

    def toml_list(items):
        return "[" + ", ".join(json.dumps(x) for x in items) + "]"

    lines = [
        "# Synthetic company for scripts/bench: generated by scripts/lib/company.py",
        "[everywhere]",
        'groups = ["Linux Admins", "SRE"]' if dense else 'groups = ["Linux Admins"]',
        "",
        "[deny]",
        f"users = {toml_list(denied)}",
        "",
    ]
    tsv = ["everywhere\tgroup\tLinux Admins"] + (["everywhere\tgroup\tSRE"] if dense else [])
    for name, (groups, direct) in access_groups.items():
        lines += [f"[access_groups.{name}]", f"groups = {toml_list(groups)}"]
        if direct:
            lines.append(f"users = {toml_list(direct)}")
        lines.append("")
        tsv += [f"{name}\tgroup\t{g}" for g in groups]
        tsv += [f"{name}\tuser\t{u}" for u in direct]
    tsv += [f"deny\tuser\t{u}" for u in denied]

    os.makedirs(out, exist_ok=True)
    with open(f"{out}/directory.json", "w") as f:
        json.dump(fixture, f)
    with open(f"{out}/access-groups.toml", "w") as f:
        f.write("\n".join(lines))
    with open(f"{out}/naive-policy.tsv", "w") as f:
        f.write("\n".join(tsv) + "\n")
    with open(f"{out}/locked.txt", "w") as f:
        f.write("\n".join(locked) + "\n")

    homes = f"{out}/homes"
    key_count = files = shared = 0
    first_keys = []
    for u in users:
        name, uid = u["name"], u["uid_number"]
        r = rng.random()
        if r < 0.01:
            continue  # no home at all
        home = f"{homes}/{name}"
        ssh = f"{home}/.ssh"
        os.makedirs(ssh, exist_ok=True)
        if r < 0.05:
            os.chown(home, uid, uid)
            os.chown(ssh, uid, uid)
            continue  # a home without authorized_keys
        body = []
        if rng.random() < 0.05:
            body.append("# my keys")
        for k in range(rng.choice([1, 1, 1, 2, 2, 3])):
            key = f"{take(rng.choice(KINDS))} {name}@laptop{k}"
            r = rng.random()
            if r < 0.10:
                key = f"{rng.choice(OPTIONS)} {key}"
            elif r < 0.101:
                key = f'environment="LD_PRELOAD=/tmp/x.so" {key}'
            body.append(key)
            key_count += 1
        # Drawn from dense_rng (after the directory's draws), so the directory, and the DC
        # populated from it, do not depend on which keys are shared.
        own = next(line for line in body if not line.startswith("#"))
        if shape == "production" and first_keys and dense_rng.random() < 0.005:
            body.append(dense_rng.choice(first_keys))
            shared += 1
        # The key without its comment (options and all), as a colleague would paste it.
        first_keys.append(own.rsplit(" ", 1)[0] + " copied-from-a-colleague")
        path = f"{ssh}/authorized_keys"
        with open(path, "w") as f:
            f.write("\n".join(body) + "\n")
        os.chmod(path, 0o600)
        os.chmod(ssh, 0o700)
        os.chown(path, uid, uid)
        os.chown(ssh, uid, uid)
        os.chown(home, uid, uid)
        files += 1

    facts = {
        "users": users_count,
        "density": shape,
        "disabled": sum(1 for u in users if u.get("disabled")),
        "expired": sum(1 for u in users if u.get("expires")),
        "locked": len(locked),
        "ad_groups": len(members),
        "largest_group": len(big),
        "access_groups": len(access_groups),
        "authorized_keys_files": files,
        "keys": key_count,
        "shared_keys": shared,
    }
    with open(f"{out}/facts.json", "w") as f:
        json.dump(facts, f)
    print(json.dumps(facts))


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "keys":
        cmd_keys(sys.argv[2], int(sys.argv[3]))
    elif len(sys.argv) in (5, 6) and sys.argv[1] == "build":
        if len(sys.argv) == 6 and sys.argv[5] not in ("dense", "sparse", "production"):
            sys.exit(__doc__)
        cmd_build(int(sys.argv[2]), sys.argv[3], sys.argv[4], (sys.argv[5:] or ["sparse"])[0])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
