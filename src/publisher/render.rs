//! Rendering: from resolved access groups and each member's validated keys to the exact bytes of
//! each group's `authorized_keys`. Pure: no I/O, no clock, no randomness, so the same input gives
//! byte-identical output and an unchanged group is never rewritten.
//!
//! A group file is a short header, then for each user with keys (sorted as the resolution sorts
//! them) a `# <user>` line (`# <user> via <group> > <group>` when a group chain gives the access)
//! followed by that user's keys in the order of their own file.
//!
//! Three rules protect access here, each decided once per person, not once per group:
//! - A member whose home could not be read (`Unknown`) keeps exactly the key lines published for
//!   them in this group's verified published file (`carried`), and nothing else: every other
//!   change to the group, and every revocation (theirs included: a member who is disabled,
//!   denied or out of the group is simply not in the membership), still applies. An unreadable
//!   home never holds back anyone else's revocation, and never adds a key.
//! - A key in `[deny] fingerprints` is dropped wherever it is, carried keys included.
//! - A key found in more than one person's file stays with the person it was published for
//!   (`owners`), and is dropped, with a problem, for the others: public keys are public, and
//!   pasting a colleague's key must not revoke the colleague. When none of them had it
//!   published, it is dropped from all: it cannot be attributed to a person. The owners object
//!   also remembers keys that stopped being published (for `keys.revocation_retention`): such
//!   a key may be published again only for the person it was published for.
//!
//! An access group with `options` (restrictions such as `from="10.20.0.0/16"`) has them merged
//! into each of its key lines by `keys::merge`; a key whose own options conflict with the group's
//! (a different `command=`, a disjoint `from=`) is left out of that group only, with a problem
//! naming the key and the group. Lines carried over for an unreadable home get the group's
//! current options merged again (merging identical options changes nothing). Automation accounts
//! are members like people (`automation:NAME`), so a key in both an automation key file and a
//! person's file is contested exactly as between two people.
//!
//! A group is rendered either into a [`Digest`] (its SHA-256 and counts, without building the
//! text: how a run finds that nothing changed) or into a [`GroupFile`] (the bytes to write, and
//! who is in them, for the groups that changed).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use rustc_hash::FxHashMap;

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::bucket::group_file::{HEADER_PREFIX, KnownLines, PublishedFile, push_block_header};
use crate::bucket::index::Owners;
use crate::digest::sha256_hex;
use crate::keys::merge::{self, MergeError};
use crate::keys::{AuthorizedKey, KeyOption};
use crate::publisher::policy::Policy;
use crate::publisher::resolve::{Membership, Resolution, Via};

/// What the homes and keys stages learnt about one person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserKeys {
    /// The keys that passed validation (possibly none).
    Known(Vec<AuthorizedKey>),
    /// The home could not be read (I/O error, timeout): only what was published for this person
    /// may be served.
    Unknown(String),
}

/// Something a person should hear about: a rejected file, a dropped line, a denied key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Problem {
    pub user: String,
    pub reason: String,
}

/// One access group's file, ready to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupFile {
    pub body: String,
    /// Hex SHA-256 of `body`.
    pub sha256: String,
    /// Users with at least one key in the file.
    pub users: Vec<String>,
    pub via: BTreeMap<String, Via>,
    /// Every key in the file with its owner, in file order.
    pub keys: Vec<(String, String)>,
}

/// Who and which keys a group's file holds, and its SHA-256, without its text: what a plan
/// compares with the published file of a group that changed. Borrows from the renderer, the
/// membership and the carried file, so listing a group of 10,000 people copies no name or key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing<'a> {
    pub sha256: String,
    /// Users with at least one key in the file, in file order.
    pub users: Vec<&'a str>,
    /// Every key's fingerprint, in file order.
    pub fingerprints: Vec<&'a str>,
}

impl Listing<'_> {
    /// The listed file's SHA-256 and counts.
    pub fn digest(&self) -> Digest {
        Digest {
            sha256: self.sha256.clone(),
            users: self.users.len(),
            keys: self.fingerprints.len(),
        }
    }
}

/// What a run needs to know of a group file to decide whether it changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    pub sha256: String,
    pub users: usize,
    pub keys: usize,
}

/// Where rendered text goes: a string (to write it) or a hasher (to compare it).
trait Sink {
    fn push(&mut self, text: &str);
}

impl Sink for String {
    fn push(&mut self, text: &str) {
        self.push_str(text);
    }
}

impl Sink for Sha256 {
    fn push(&mut self, text: &str) {
        self.update(text.as_bytes());
    }
}

/// One person's key lines in a group, and whether they come from their home or were carried
/// over from the published file.
enum Lines<'a> {
    Fresh(&'a [&'a AuthorizedKey]),
    /// Fresh keys with the group's options merged in (keys that conflict left out).
    Restricted(Vec<(&'a AuthorizedKey, Option<String>)>),
    Carried(Vec<(&'a str, &'a str)>),
    /// Carried lines with the group's current options merged in again.
    CarriedRestricted(Vec<(String, &'a str)>),
}

/// Renders access group files one at a time, so that a run never needs every file in memory at
/// once.
#[derive(Debug)]
pub struct Renderer<'k> {
    /// Per person whose keys are known, the keys that may be published (denied and contested
    /// ones removed).
    kept: FxHashMap<&'k str, Vec<&'k AuthorizedKey>>,
    denied_fingerprints: &'k BTreeSet<String>,
    problems: Vec<Problem>,
    denied_keys: BTreeMap<String, BTreeSet<String>>,
    /// Per access group with `options`, those options parsed.
    group_options: HashMap<String, Vec<KeyOption>>,
    /// The audit canary's current and previous keys: never a member's (see [`Renderer::without_canary`]).
    canary: BTreeSet<String>,
    /// Per person in `kept`, their key lines as one text, made on first use (after `restrict`
    /// and `without_canary` have settled `kept`): a person is in 33 groups of a dense company,
    /// and a run hashes every group, so each person's lines are written once, not per group.
    fresh_text: std::sync::OnceLock<FxHashMap<&'k str, String>>,
    /// Per person in `kept`, the SHA-256 of their `fresh_text`, made on first use.
    fresh_digest: std::sync::OnceLock<FxHashMap<&'k str, [u8; 32]>>,
}

/// Fingerprints found in more than one person's known keys: deciding them needs the published
/// owners, which a run reads only when this is not empty.
pub fn contested(keys: &BTreeMap<String, UserKeys>) -> BTreeSet<String> {
    holders(keys)
        .into_iter()
        .filter(|(_, holders)| holders.len() > 1)
        .map(|(fingerprint, _)| fingerprint.to_owned())
        .collect()
}

fn holders(keys: &BTreeMap<String, UserKeys>) -> FxHashMap<&str, Vec<&str>> {
    let mut owners: FxHashMap<&str, Vec<&str>> = FxHashMap::default();
    for (user, user_keys) in keys {
        if let UserKeys::Known(list) = user_keys {
            for key in list {
                let holders = owners.entry(key.fingerprint.as_str()).or_default();
                if holders.last() != Some(&user.as_str()) {
                    holders.push(user);
                }
            }
        }
    }
    owners
}

impl<'k> Renderer<'k> {
    /// `keys` holds an entry for every member (a missing entry counts as unknown, never as "no
    /// keys"); `denied_fingerprints` come from `[deny]`; `owners` is who each key was published
    /// for (needed only when [`contested`] is not empty).
    pub fn new(
        keys: &'k BTreeMap<String, UserKeys>,
        denied_fingerprints: &'k BTreeSet<String>,
        owners: Option<&Owners>,
    ) -> Self {
        let holders = holders(keys);
        let mut problems = BTreeSet::new();
        let mut denied_keys: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut kept = FxHashMap::default();
        for (user, user_keys) in keys {
            let list = match user_keys {
                UserKeys::Known(list) => list,
                UserKeys::Unknown(_) => continue,
            };
            let mut mine = Vec::with_capacity(list.len());
            for key in list {
                let fingerprint = key.fingerprint.as_str();
                let holders = &holders[fingerprint];
                let published_for = owners.and_then(|owners| owners.get(fingerprint));
                let reason = if denied_fingerprints.contains(fingerprint) {
                    denied_keys
                        .entry(user.clone())
                        .or_default()
                        .insert(fingerprint.to_owned());
                    format!("key {fingerprint} is denied by the policy")
                } else if holders.len() <= 1 {
                    // The owners object remembers a key for keys.revocation_retention after it
                    // stops being published: until then only its owner may publish it again, so
                    // a colleague who copies it while the owner is locked out does not take it.
                    match published_for {
                        Some(owner) if owner != user => format!(
                            "key {fingerprint} is {owner}'s (published for them within \
                             keys.revocation_retention); only {owner} may publish it again"
                        ),
                        _ => {
                            mine.push(key);
                            continue;
                        }
                    }
                } else {
                    match published_for {
                        Some(owner) if owner == user => {
                            mine.push(key);
                            continue;
                        }
                        Some(owner) if holders.contains(&owner.as_str()) => format!(
                            "key {fingerprint} is published for {owner}; dropped from this file \
                             (a copy of someone else's public key grants nothing)"
                        ),
                        _ => format!(
                            "key {fingerprint} is also in the files of {}; dropped from all of them",
                            holders.join(", ")
                        ),
                    }
                };
                problems.insert(Problem {
                    user: user.clone(),
                    reason,
                });
            }
            kept.insert(user.as_str(), mine);
        }
        Renderer {
            kept,
            denied_fingerprints,
            problems: problems.into_iter().collect(),
            denied_keys,
            group_options: HashMap::new(),
            canary: BTreeSet::new(),
            fresh_text: std::sync::OnceLock::new(),
            fresh_digest: std::sync::OnceLock::new(),
        }
    }

    /// The digest of everything the group's file is rendered from: its name, and each member's
    /// name, chain and key lines, in order (see `render_memo`). `None` when the file also depends
    /// on something else: group options, or a member whose home could not be read (their lines
    /// come from the published file).
    pub fn input_digest(
        &self,
        name: &str,
        membership: &Membership,
        carried: Option<&PublishedFile>,
    ) -> Option<String> {
        if carried.is_some() || self.group_options.contains_key(name) {
            return None;
        }
        let digests = self.fresh_digest.get_or_init(|| {
            self.kept
                .keys()
                .map(|user| {
                    let text = self.fresh_text(user);
                    (*user, Sha256::digest(text.as_bytes()).into())
                })
                .collect()
        });
        // Each string with its length before it, so no two inputs run together into one.
        let mut input = Vec::with_capacity(64 + membership.users.len() * 96);
        let mut put = |bytes: &[u8]| {
            input.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            input.extend_from_slice(bytes);
        };
        put(name.as_bytes());
        for member in &membership.users {
            let digest = digests.get(member.name.as_str())?;
            put(member.name.as_bytes());
            put(&(member.via.len() as u64).to_le_bytes());
            for group in member.via.iter() {
                put(group.as_bytes());
            }
            put(digest);
        }
        Some(hex::encode(Sha256::digest(&input)))
    }

    /// `user`'s kept key lines as they are written without group options.
    fn fresh_text(&self, user: &str) -> &str {
        let texts = self.fresh_text.get_or_init(|| {
            self.kept
                .iter()
                .map(|(user, keys)| {
                    let mut text = String::new();
                    for key in keys {
                        push_key(&mut text, key);
                    }
                    (*user, text)
                })
                .collect()
        });
        texts.get(user).map_or("", String::as_str)
    }

    /// Drops the audit canary's keys (`fingerprints`: its current and previous) from every
    /// member's and automation account's lines, each reported naming the member: a member who
    /// pasted the canary's public key would otherwise get an unrestricted line for it, and
    /// whoever holds the canary's private key a shell logged as the canary.
    pub fn without_canary(mut self, fingerprints: BTreeSet<String>) -> Self {
        if fingerprints.is_empty() {
            return self;
        }
        let mut problems: BTreeSet<Problem> = self.problems.drain(..).collect();
        for (user, keys) in &mut self.kept {
            keys.retain(|key| {
                let canary = fingerprints.contains(key.fingerprint.as_str());
                if canary {
                    problems.insert(Problem {
                        user: (*user).to_owned(),
                        reason: format!(
                            "key {} is the keyhole audit canary's key: dropped (the canary key is \
                             never a member's)",
                            key.fingerprint.as_str()
                        ),
                    });
                }
                !canary
            });
        }
        self.problems = problems.into_iter().collect();
        self.canary = fingerprints;
        self
    }

    /// Applies the access groups' `options` of `policy` to their key lines, reporting every key
    /// (of a member of `resolution`) that cannot be published in a group because its own options
    /// conflict with the group's.
    pub fn restrict(mut self, policy: &Policy, resolution: &Resolution) -> Self {
        let mut problems: BTreeSet<Problem> = self.problems.drain(..).collect();
        for (name, group) in &policy.access_groups {
            if group.options.is_empty() {
                continue;
            }
            let options = match merge::parse_group_options(&group.options) {
                Ok(options) => options,
                // `policy::parse` validated them; should they still not parse, nobody in the
                // group gets a key rather than a key without its restriction.
                Err(why) => vec![KeyOption {
                    name: format!("invalid group options: {why}"),
                    value: None,
                }],
            };
            if let Some(membership) = resolution.access_groups.get(name) {
                for member in &membership.users {
                    for key in self.kept.get(member.name.as_str()).into_iter().flatten() {
                        if let Err(why) = merge::merge(key.options.as_deref(), &options) {
                            problems.insert(Problem {
                                user: member.name.to_string(),
                                reason: format!(
                                    "key {} left out of access group {name}: {why}",
                                    key.fingerprint.as_str()
                                ),
                            });
                        }
                    }
                }
            }
            self.group_options.insert(name.clone(), options);
        }
        self.problems = problems.into_iter().collect();
        self
    }

    /// The options `key` is published with in `group`: its own merged with the group's.
    fn options_in(&self, group: &str, own: Option<&str>) -> Result<Option<String>, MergeError> {
        match self.group_options.get(group) {
            Some(options) => merge::merge(own, options),
            None => Ok(own.map(str::to_owned)),
        }
    }

    /// Keys dropped from every file and why, sorted.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// Per person, the fingerprints dropped because `[deny]` lists them.
    pub fn denied_keys(&self) -> &BTreeMap<String, BTreeSet<String>> {
        &self.denied_keys
    }

    /// Members of `membership` whose keys are unknown: their lines come from the published file.
    pub fn unknown_members<'m>(&self, membership: &'m Membership) -> Vec<&'m str> {
        membership
            .users
            .iter()
            .filter(|member| !self.kept.contains_key(member.name.as_str()))
            .map(|member| member.name.as_str())
            .collect()
    }

    /// The keys of people whose homes were read, by fingerprint, as they are published: who a key
    /// is published for, for the owners object.
    pub fn owners(&self) -> Owners {
        self.kept
            .iter()
            .flat_map(|(user, keys)| {
                keys.iter()
                    .map(|key| (key.fingerprint.as_str().to_owned(), (*user).to_owned()))
            })
            .collect()
    }

    /// The line of every key this renderer publishes as it is (without a group's options), with
    /// its fingerprint: what reading a published file back need not decode again.
    pub fn known_lines(&self) -> KnownLines {
        KnownLines::new(self.kept.values().flatten().map(|key| {
            let mut line = String::new();
            push_key(&mut line, key);
            line.pop();
            (line, key.fingerprint.as_str())
        }))
    }

    /// The SHA-256 and counts of the group's file, without building its text.
    pub fn digest(
        &self,
        name: &str,
        membership: &Membership,
        carried: Option<&PublishedFile>,
    ) -> Digest {
        let mut hasher = Sha256::new();
        let (mut users, mut keys) = (0, 0);
        self.emit(name, membership, carried, &mut hasher, |_, lines| {
            users += 1;
            keys += lines;
        });
        Digest {
            sha256: hex::encode(hasher.finalize()),
            users,
            keys,
        }
    }

    /// The group's people and keys and its SHA-256, without building its text.
    pub fn listing<'a>(
        &'a self,
        name: &str,
        membership: &'a Membership,
        carried: Option<&'a PublishedFile>,
    ) -> Listing<'a> {
        let mut hasher = Sha256::new();
        let mut users = Vec::new();
        self.emit(name, membership, carried, &mut hasher, |member, _| {
            users.push(member.name.as_str());
        });
        Listing {
            sha256: hex::encode(hasher.finalize()),
            users,
            fingerprints: self
                .fingerprints(name, membership, carried)
                .into_iter()
                .map(|(_, fingerprint)| fingerprint)
                .collect(),
        }
    }

    /// The group's file.
    pub fn file(
        &self,
        name: &str,
        membership: &Membership,
        carried: Option<&PublishedFile>,
    ) -> GroupFile {
        let mut body = String::new();
        let mut users = Vec::new();
        let mut via = BTreeMap::new();
        self.emit(name, membership, carried, &mut body, |member, _| {
            users.push(member.name.to_string());
            via.insert(member.name.to_string(), member.via.clone());
        });
        let keys = self
            .fingerprints(name, membership, carried)
            .into_iter()
            .map(|(owner, fingerprint)| (owner.to_owned(), fingerprint.to_owned()))
            .collect();
        GroupFile {
            sha256: sha256_hex(body.as_bytes()),
            body,
            users,
            via,
            keys,
        }
    }

    /// Every key of the group's file with its owner, in file order.
    fn fingerprints<'a>(
        &'a self,
        group: &str,
        membership: &'a Membership,
        carried: Option<&'a PublishedFile>,
    ) -> Vec<(&'a str, &'a str)> {
        let mut keys = Vec::new();
        for member in &membership.users {
            let owner = member.name.as_str();
            match self.lines(group, owner, carried) {
                Some(Lines::Fresh(list)) => {
                    keys.extend(list.iter().map(|key| (owner, key.fingerprint.as_str())));
                }
                Some(Lines::Carried(list)) => keys.extend(list.iter().map(|(_, fp)| (owner, *fp))),
                Some(Lines::Restricted(list)) => {
                    keys.extend(
                        list.iter()
                            .map(|(key, _)| (owner, key.fingerprint.as_str())),
                    );
                }
                Some(Lines::CarriedRestricted(list)) => {
                    keys.extend(list.iter().map(|(_, fp)| (owner, *fp)));
                }
                None => {}
            }
        }
        keys
    }

    /// The lines a member has in this group: their validated keys, or, when their home could not
    /// be read, what was published for them here (minus denied keys). `None`: no lines.
    fn lines<'a>(
        &'a self,
        group: &str,
        user: &str,
        carried: Option<&'a PublishedFile>,
    ) -> Option<Lines<'a>> {
        let lines = match self.kept.get(user) {
            Some(list) if self.group_options.contains_key(group) => Lines::Restricted(
                list.iter()
                    .filter_map(|key| {
                        let options = self.options_in(group, key.options.as_deref()).ok()?;
                        Some((*key, options))
                    })
                    .collect(),
            ),
            Some(list) => Lines::Fresh(list),
            // Unknown, or (never in a run) no entry at all: never "no keys".
            None => {
                let block = carried.and_then(|file| file.block(user))?;
                let published = block
                    .keys
                    .iter()
                    .filter_map(|(line, fp)| Some((line.as_str(), fp.as_deref()?)))
                    .filter(|(_, fp)| {
                        !self.denied_fingerprints.contains(*fp) && !self.canary.contains(*fp)
                    });
                if self.group_options.contains_key(group) {
                    Lines::CarriedRestricted(
                        published
                            .filter_map(|(line, fp)| Some((self.restrict_line(group, line)?, fp)))
                            .collect(),
                    )
                } else {
                    Lines::Carried(published.collect())
                }
            }
        };
        let empty = match &lines {
            Lines::Fresh(list) => list.is_empty(),
            Lines::Restricted(list) => list.is_empty(),
            Lines::Carried(list) => list.is_empty(),
            Lines::CarriedRestricted(list) => list.is_empty(),
        };
        (!empty).then_some(lines)
    }

    /// A published line with the group's options merged into its own; `None` when they conflict
    /// or the line no longer parses.
    fn restrict_line(&self, group: &str, line: &str) -> Option<String> {
        let key =
            crate::keys::parse_authorized_keys(line, &crate::bucket::group_file::any_key_policy())
                .keys
                .pop()?;
        let options = self.options_in(group, key.options.as_deref()).ok()?;
        let mut out = String::new();
        push_key_with(&mut out, options.as_deref(), &key);
        out.pop();
        Some(out)
    }

    /// Writes the group's file into `sink`, calling `person` for each person with keys in it.
    fn emit<'m>(
        &self,
        name: &str,
        membership: &'m Membership,
        carried: Option<&PublishedFile>,
        sink: &mut impl Sink,
        mut person: impl FnMut(&'m crate::publisher::resolve::Member, usize),
    ) {
        sink.push(HEADER_PREFIX);
        sink.push(name);
        sink.push(": generated, do not edit\n");
        for member in &membership.users {
            let Some(lines) = self.lines(name, &member.name, carried) else {
                continue;
            };
            push_block_header(&mut |piece| sink.push(piece), &member.name, &member.via);
            let count = match lines {
                Lines::Fresh(list) => {
                    sink.push(self.fresh_text(&member.name));
                    list.len()
                }
                Lines::Carried(list) => {
                    for (line, _) in &list {
                        sink.push(line);
                        sink.push("\n");
                    }
                    list.len()
                }
                Lines::Restricted(list) => {
                    for (key, options) in &list {
                        push_key_with(sink, options.as_deref(), key);
                    }
                    list.len()
                }
                Lines::CarriedRestricted(list) => {
                    for (line, _) in &list {
                        sink.push(line);
                        sink.push("\n");
                    }
                    list.len()
                }
            };
            person(member, count);
        }
    }
}

/// A key line as `AuthorizedKey::line` spells it, written piecewise (no allocation).
fn push_key(sink: &mut impl Sink, key: &AuthorizedKey) {
    push_key_with(sink, key.options.as_deref(), key);
}

/// A key line with `options` in place of the key's own.
fn push_key_with(sink: &mut impl Sink, options: Option<&str>, key: &AuthorizedKey) {
    if let Some(options) = options {
        sink.push(options);
        sink.push(" ");
    }
    sink.push(&key.key_type);
    sink.push(" ");
    sink.push(&key.blob);
    if let Some(comment) = &key.comment {
        sink.push(" ");
        sink.push(comment);
    }
    sink.push("\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{KeyPolicy, parse_authorized_keys};

    const ED_A: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOPAo/RxVnDzNjGvP41+SlwXlH4IbNrQebofz9HvuaWq a@host";
    const ED_B: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ+IR8TskynvftW3EfRyCVskOiAVP6iaiVeXwIV7bhM8 b@host";

    fn keys_of(text: &str) -> UserKeys {
        UserKeys::Known(parse_authorized_keys(text, &KeyPolicy::default()).keys)
    }

    fn fingerprint_of(line: &str) -> String {
        parse_authorized_keys(line, &KeyPolicy::default()).keys[0]
            .fingerprint
            .as_str()
            .to_owned()
    }

    /// The file, checked against its digest and its listing: every way of rendering must agree;
    /// and read back with the renderer's known lines exactly as without them.
    fn file(
        renderer: &Renderer<'_>,
        name: &str,
        m: &Membership,
        carried: Option<&PublishedFile>,
    ) -> GroupFile {
        let file = renderer.file(name, m, carried);
        assert_eq!(
            renderer.digest(name, m, carried),
            Digest {
                sha256: file.sha256.clone(),
                users: file.users.len(),
                keys: file.keys.len()
            }
        );
        let listing = renderer.listing(name, m, carried);
        assert_eq!(listing.sha256, file.sha256);
        assert_eq!(listing.users, file.users);
        let fingerprints: Vec<&str> = file.keys.iter().map(|(_, fp)| fp.as_str()).collect();
        assert_eq!(listing.fingerprints, fingerprints);
        assert_eq!(
            PublishedFile::parse_knowing(file.body.as_bytes(), &renderer.known_lines()),
            PublishedFile::parse(file.body.as_bytes())
        );
        file
    }

    #[test]
    fn a_group_file_is_users_in_order_each_with_a_header_and_their_keys() {
        let keys = BTreeMap::from([
            ("alice".to_string(), keys_of(ED_A)),
            ("bob".to_string(), keys_of(ED_B)),
            ("carol".to_string(), keys_of("")),
        ]);
        let none = BTreeSet::new();
        let renderer = Renderer::new(&keys, &none, None);
        let web = Membership::through_team(&["alice", "bob", "carol"]);
        let rendered = file(&renderer, "web", &web, None);
        assert_eq!(
            rendered.body,
            format!(
                "# keyhole access group web: generated, do not edit\n# alice via Team\n{ED_A}\n# bob via Team\n{ED_B}\n"
            )
        );
        assert_eq!(rendered.users, ["alice", "bob"]);
        assert_eq!(rendered.sha256, sha256_hex(rendered.body.as_bytes()));
        // Same input, same bytes, from a renderer of its own too.
        assert_eq!(
            Renderer::new(&keys, &none, None).file("web", &web, None),
            rendered
        );
        // A person named directly has no chain.
        let mut direct = Membership::through_team(&["bob"]);
        direct.users[0].via = Vec::new().into();
        assert!(
            file(&renderer, "db", &direct, None)
                .body
                .contains("\n# bob\n")
        );
        assert_eq!(renderer.owners().len(), 2);
        // Every published line of a key is known, with its fingerprint.
        let known = renderer.known_lines();
        for (line, fingerprint) in [(ED_A, fingerprint_of(ED_A)), (ED_B, fingerprint_of(ED_B))] {
            assert_eq!(known.fingerprint(line), Some(fingerprint.as_str()));
        }
    }

    /// The render memo's promise: two inputs with the same digest render the same file, so the
    /// digest moves with everything the file is made of.
    #[test]
    fn the_input_digest_moves_with_every_input_of_the_file_and_only_with_them() {
        let keys = BTreeMap::from([
            ("alice".to_string(), keys_of(ED_A)),
            ("bob".to_string(), keys_of(ED_B)),
        ]);
        let none = BTreeSet::new();
        let renderer = Renderer::new(&keys, &none, None);
        let web = Membership::through_team(&["alice", "bob"]);
        let digest = |renderer: &Renderer<'_>, name: &str, m: &Membership| {
            renderer
                .input_digest(name, m, None)
                .expect("an input digest")
        };
        let base = digest(&renderer, "web", &web);
        // The same input from a renderer of its own: the same digest (and the same file).
        assert_eq!(
            digest(&Renderer::new(&keys, &none, None), "web", &web),
            base
        );

        let mut changes: Vec<(&str, String)> = vec![("group name", digest(&renderer, "db", &web))];
        let mut renamed = web.clone();
        renamed.users[1].name = "bobby".into();
        let renamed_keys = BTreeMap::from([
            ("alice".to_string(), keys_of(ED_A)),
            ("bobby".to_string(), keys_of(ED_B)),
        ]);
        changes.push((
            "member name",
            digest(&Renderer::new(&renamed_keys, &none, None), "web", &renamed),
        ));
        let mut moved = web.clone();
        moved.users[1].via = std::sync::Arc::from(["Team".to_owned(), "Ops".to_owned()]);
        changes.push(("chain", digest(&renderer, "web", &moved)));
        let mut direct = web.clone();
        direct.users[1].via = Vec::new().into();
        changes.push(("named directly", digest(&renderer, "web", &direct)));
        let one = Membership::through_team(&["alice"]);
        changes.push(("member left", digest(&renderer, "web", &one)));
        let rekeyed = BTreeMap::from([
            ("alice".to_string(), keys_of(ED_A)),
            ("bob".to_string(), keys_of(&format!("{ED_B}\n{ED_A}"))),
        ]);
        changes.push((
            "a key added",
            digest(&Renderer::new(&rekeyed, &none, None), "web", &web),
        ));
        let recommented = BTreeMap::from([
            ("alice".to_string(), keys_of(ED_A)),
            (
                "bob".to_string(),
                keys_of(&ED_B.replace("b@host", "b@laptop")),
            ),
        ]);
        changes.push((
            "a comment",
            digest(&Renderer::new(&recommented, &none, None), "web", &web),
        ));
        let denied = BTreeSet::from([fingerprint_of(ED_B)]);
        changes.push((
            "a key denied",
            digest(&Renderer::new(&keys, &denied, None), "web", &web),
        ));
        for (what, changed) in &changes {
            assert_ne!(changed, &base, "the digest did not move with the {what}");
        }
        // Each of those changes also changes the file: the digest is not finer than the file
        // needs, except that it also moves when a member without keys changes.
        let distinct: BTreeSet<&String> = changes.iter().map(|(_, digest)| digest).collect();
        assert_eq!(distinct.len(), changes.len());
    }

    #[test]
    fn no_input_digest_for_a_group_with_options_or_an_unreadable_member() {
        let keys = BTreeMap::from([
            ("alice".to_string(), keys_of(ED_A)),
            ("bob".to_string(), UserKeys::Unknown("timed out".to_owned())),
        ]);
        let none = BTreeSet::new();
        let renderer = Renderer::new(&keys, &none, None);
        assert!(
            renderer
                .input_digest("web", &Membership::through_team(&["alice", "bob"]), None)
                .is_none()
        );
        assert!(
            renderer
                .input_digest("web", &Membership::through_team(&["alice"]), None)
                .is_some()
        );
        let carried = PublishedFile::default();
        assert!(
            renderer
                .input_digest("web", &Membership::through_team(&["alice"]), Some(&carried))
                .is_none()
        );
    }

    #[test]
    fn an_unknown_member_keeps_only_their_published_lines_and_nothing_else_waits() {
        let denied_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILM+rvN+ot98qgEN796jTiQfszvdxQkh3m2q6wIUyF7P old@host";
        let published = PublishedFile::parse(
            format!(
                "# keyhole access group web: generated, do not edit\n# bob via Team\n{ED_B}\n{denied_key}\n# carol via Team\n{ED_A}\n"
            )
            .as_bytes(),
        );
        let keys = BTreeMap::from([
            ("bob".to_string(), UserKeys::Unknown("timed out".into())),
            ("dave".to_string(), keys_of(ED_A)),
        ]);
        let denied = BTreeSet::from([fingerprint_of(denied_key)]);
        let renderer = Renderer::new(&keys, &denied, None);
        // carol left (not a member), dave joined, bob's home is unreadable: bob keeps his
        // published key (not the denied one), the rest of the group changes.
        let web = Membership::through_team(&["bob", "dave"]);
        let rendered = file(&renderer, "web", &web, Some(&published));
        assert_eq!(
            rendered.body,
            format!(
                "# keyhole access group web: generated, do not edit\n# bob via Team\n{ED_B}\n# dave via Team\n{ED_A}\n"
            )
        );
        assert_eq!(renderer.unknown_members(&web), ["bob"]);
        // Without a published block (new to the group), an unknown member gets nothing.
        let ops = Membership::through_team(&["bob", "zoe"]);
        let rendered = file(&renderer, "ops", &ops, None);
        assert!(rendered.users.is_empty(), "{rendered:?}");
    }

    #[test]
    fn denied_keys_are_dropped_and_a_copied_key_stays_with_its_published_owner() {
        let alice = keys_of(ED_A);
        let denied = BTreeSet::from([fingerprint_of(ED_A)]);
        let keys = BTreeMap::from([
            ("alice".to_string(), alice.clone()),
            ("bob".to_string(), keys_of(ED_B)),
            ("eve".to_string(), keys_of(ED_B)),
        ]);
        assert_eq!(contested(&keys), BTreeSet::from([fingerprint_of(ED_B)]));
        let web = Membership::through_team(&["alice", "bob", "eve"]);

        // Nobody had it published: dropped from both.
        let renderer = Renderer::new(&keys, &denied, None);
        assert!(file(&renderer, "web", &web, None).users.is_empty());
        assert_eq!(renderer.denied_keys()["alice"].len(), 1);
        let problems = renderer.problems();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[1].reason.contains("also in the files of bob, eve"));

        // Published for bob: eve's copy is dropped, bob keeps it.
        let owners = Owners::from([(fingerprint_of(ED_B), "bob".to_string())]);
        let renderer = Renderer::new(&keys, &denied, Some(&owners));
        assert_eq!(file(&renderer, "web", &web, None).users, ["bob"]);
        let problems = renderer.problems();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(problems[1].user, "eve");
        assert!(problems[1].reason.contains("is published for bob"));
        assert_eq!(renderer.owners(), owners);
    }

    #[test]
    fn during_the_retention_only_its_owner_may_publish_a_key_again() {
        // alice's key stopped being published (she is locked out); bob pasted it into his file.
        let keys = BTreeMap::from([("bob".to_string(), keys_of(&format!("{ED_A}\n{ED_B}")))]);
        let none = BTreeSet::new();
        let owners = Owners::from([(fingerprint_of(ED_A), "alice".to_string())]);
        let renderer = Renderer::new(&keys, &none, Some(&owners));
        let web = file(&renderer, "web", &Membership::through_team(&["bob"]), None);
        assert_eq!(web.keys, [("bob".to_string(), fingerprint_of(ED_B))]);
        assert!(
            renderer.problems()[0]
                .reason
                .contains("only alice may publish it again"),
            "{:?}",
            renderer.problems()
        );
        // Without a record (past the retention), it is bob's to publish.
        let renderer = Renderer::new(&keys, &none, Some(&Owners::new()));
        assert_eq!(
            file(&renderer, "web", &Membership::through_team(&["bob"]), None)
                .keys
                .len(),
            2
        );
    }

    #[test]
    fn group_options_restrict_every_line_of_their_group_only_and_conflicts_are_reported() {
        let policy = crate::publisher::policy::parse(
            std::path::Path::new("p.toml"),
            "[access_groups.ops]\nusers = [\"x\"]\noptions = ['from=\"10.20.0.0/16\"', \"no-pty\"]\n\
             [access_groups.web]\nusers = [\"x\"]\n",
        )
        .unwrap()
        .policy;
        let narrow = format!("from=\"192.168.0.0/16\" {ED_B}");
        let keys = BTreeMap::from([
            ("alice".to_string(), keys_of(ED_A)),
            ("bob".to_string(), keys_of(&narrow)),
        ]);
        let members = Membership::through_team(&["alice", "bob"]);
        let resolution = Resolution {
            access_groups: BTreeMap::from([
                ("ops".to_string(), members.clone()),
                ("web".to_string(), members.clone()),
            ]),
            warnings: vec![],
        };
        let none = BTreeSet::new();
        let renderer = Renderer::new(&keys, &none, None).restrict(&policy, &resolution);
        let ops = file(&renderer, "ops", &members, None);
        assert_eq!(
            ops.body,
            format!(
                "# keyhole access group ops: generated, do not edit\n# alice via Team\nfrom=\"10.20.0.0/16\",no-pty {ED_A}\n"
            )
        );
        // bob's own from= has nothing in common with the group's: left out of ops only.
        let web = file(&renderer, "web", &members, None);
        assert_eq!(web.users, ["alice", "bob"]);
        assert!(web.body.contains(&narrow));
        let problems = renderer.problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].user, "bob");
        assert!(
            problems[0]
                .reason
                .contains("left out of access group ops: the key's from=\"192.168.0.0/16\""),
            "{problems:?}"
        );
        // A carried line (unreadable home) gets the group's options merged again, once.
        let published = PublishedFile::parse(ops.body.as_bytes());
        let unknown = BTreeMap::from([("alice".to_string(), UserKeys::Unknown("timeout".into()))]);
        let renderer = Renderer::new(&unknown, &none, None).restrict(&policy, &resolution);
        let alice = Membership::through_team(&["alice"]);
        assert_eq!(
            file(&renderer, "ops", &alice, Some(&published)).body,
            ops.body
        );
    }

    #[test]
    fn an_automation_key_pasted_by_a_person_stays_with_the_account() {
        let keys = BTreeMap::from([
            ("automation:ci".to_string(), keys_of(ED_A)),
            ("bob".to_string(), keys_of(&format!("{ED_A}\n{ED_B}"))),
        ]);
        assert_eq!(contested(&keys), BTreeSet::from([fingerprint_of(ED_A)]));
        let owners = Owners::from([(fingerprint_of(ED_A), "automation:ci".to_string())]);
        let none = BTreeSet::new();
        let renderer = Renderer::new(&keys, &none, Some(&owners));
        let web = file(
            &renderer,
            "web",
            &Membership::through_team(&["automation:ci", "bob"]),
            None,
        );
        assert_eq!(
            web.keys,
            [
                ("automation:ci".to_string(), fingerprint_of(ED_A)),
                ("bob".to_string(), fingerprint_of(ED_B))
            ]
        );
        assert!(
            renderer.problems()[0]
                .reason
                .contains("is published for automation:ci")
        );
    }

    #[test]
    fn the_canary_key_is_dropped_from_members_and_automation_accounts_naming_them() {
        // ED_A is the canary's key, pasted into an automation account's key file.
        let keys = BTreeMap::from([
            ("automation:ci".to_string(), keys_of(ED_A)),
            ("bob".to_string(), keys_of(ED_B)),
        ]);
        let none = BTreeSet::new();
        let canary = BTreeSet::from([fingerprint_of(ED_A)]);
        let renderer = Renderer::new(&keys, &none, None).without_canary(canary.clone());
        let web = file(
            &renderer,
            "web",
            &Membership::through_team(&["automation:ci", "bob"]),
            None,
        );
        assert_eq!(web.keys, [("bob".to_string(), fingerprint_of(ED_B))]);
        assert!(!web.body.contains(ED_A.split_whitespace().nth(1).unwrap()));
        let problems = renderer.problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].user, "automation:ci");
        assert!(problems[0].reason.contains("audit canary"), "{problems:?}");
        assert!(!renderer.owners().contains_key(&fingerprint_of(ED_A)));
    }
}
