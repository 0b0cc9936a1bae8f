//! The fingerprint lookup of an access group file and the per-group seal over it: what lets a
//! login find the lines that can match the key offered, and prove they are what the publisher
//! signed, reading a bounded amount of data per host group whatever the group's size.
//!
//! Both sides compute the lookup the same way from the group file's bytes (this module is the
//! only place that knows how), so the publisher can sign its root and the instance can check it:
//! - every key line goes to one of [`BUCKETS`] buckets, chosen by the first byte of the SHA-256
//!   of its fingerprint's text (`SHA256:…`, what sshd passes as `%f`). A `cert-authority` line
//!   goes to one more bucket, [`CA_BUCKET`]: it matches a certificate signed by that CA, never
//!   `%f`, so it is served with every key;
//! - a bucket holds one entry per line, in file order: `{fingerprint}\t{["user",["via",…]]}\t{line}\n`
//!   (the person whose block the line is in, as compact JSON, so attribution needs no other file);
//! - each bucket's hash is the SHA-256 of its entries, and the root is the SHA-256 of
//!   [`ROOT_TAG`] followed by the 257 bucket hashes.
//!
//! The seal is an SSHSIG (namespace `keyhole`) over a small canonical [`Statement`]: deployment,
//! group, generation, `not_after`, the file's SHA-256, the lookup root and the canary line. It
//! starts with [`STATEMENT_TAG`], never `{`, so it can never be mistaken for an index text signed
//! with the same key. A login checks one seal per host group, one 12 KiB table and the buckets it
//! reads: about 13,000 keys cost what 10 do (a bucket holds 1/256 of the group).
//!
//! No I/O and no clock here: the callers read and write the bytes and judge `not_after`.

use std::collections::HashMap;

use crate::bucket::index::Index;
use anyhow::Context as _;
use sha2::{Digest as _, Sha256};

use crate::bucket::group_file::PublishedFile;
use crate::bucket::signing::{Signer, SigningError, Verifier};
use crate::keys::{parse_options, split_options};

/// Buckets chosen by fingerprint.
pub const BUCKETS: usize = 256;
/// The bucket of `cert-authority` lines, served with every key.
pub const CA_BUCKET: usize = BUCKETS;
/// Every bucket, the CA bucket included.
pub const ALL_BUCKETS: usize = BUCKETS + 1;
/// One table row in the serialized lookup: bucket hash, offset and length of its entries.
const ROW: usize = 32 + 8 + 8;
/// The serialized lookup's table, before the buckets' entries.
pub const TABLE_BYTES: usize = ALL_BUCKETS * ROW;
/// What the root hashes before the bucket hashes (its version).
pub const ROOT_TAG: &[u8] = b"keyhole-group-lookup-v1\n";
/// The first line of every seal statement.
pub const STATEMENT_TAG: &str = "keyhole-group-seal-v1";

/// The bucket a fingerprint's lines are in.
pub fn bucket_of(fingerprint: &str) -> usize {
    usize::from(Sha256::digest(fingerprint.as_bytes())[0])
}

/// A group file's lines, by bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    buckets: Vec<Vec<u8>>,
}

/// One line of a group, as a bucket holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<'a> {
    pub fingerprint: &'a str,
    pub user: String,
    pub via: Vec<String>,
    pub line: &'a str,
}

impl Lookup {
    /// The lookup of a group file (bytes whose SHA-256 the caller checked against a verified
    /// index or seal). A line that does not decode to a key (a keyhole publisher never writes
    /// one) matches no fingerprint and is in no bucket.
    pub fn build(body: &[u8]) -> Lookup {
        let mut buckets = vec![Vec::new(); ALL_BUCKETS];
        for block in PublishedFile::parse(body).blocks {
            let person = serde_json::to_string(&(&block.user, &block.via)).unwrap_or_default();
            for (line, fingerprint) in &block.keys {
                let Some(fingerprint) = fingerprint else {
                    continue;
                };
                let bucket = if is_cert_authority(line) {
                    CA_BUCKET
                } else {
                    bucket_of(fingerprint)
                };
                let entries = &mut buckets[bucket];
                entries.extend_from_slice(fingerprint.as_bytes());
                entries.push(b'\t');
                entries.extend_from_slice(person.as_bytes());
                entries.push(b'\t');
                entries.extend_from_slice(line.as_bytes());
                entries.push(b'\n');
            }
        }
        Lookup { buckets }
    }

    /// The hex root over the bucket hashes (what a seal signs).
    pub fn root(&self) -> String {
        let hashes: Vec<[u8; 32]> = self.buckets.iter().map(|b| hash(b)).collect();
        root_of(hashes.iter())
    }

    /// The entries of bucket `index`.
    pub fn bucket(&self, index: usize) -> &[u8] {
        self.buckets.get(index).map_or(&[], Vec::as_slice)
    }

    /// The serialized form an instance caches: a table of [`TABLE_BYTES`] (per bucket its
    /// hash, then the offset and length of its entries, little-endian) followed by the entries,
    /// so a reader takes the table and one bucket with two positioned reads.
    pub fn to_bytes(&self) -> Vec<u8> {
        let data: usize = self.buckets.iter().map(Vec::len).sum();
        let mut bytes = Vec::with_capacity(TABLE_BYTES + data);
        let mut offset = TABLE_BYTES as u64;
        for bucket in &self.buckets {
            bytes.extend_from_slice(&hash(bucket));
            bytes.extend_from_slice(&offset.to_le_bytes());
            bytes.extend_from_slice(&(bucket.len() as u64).to_le_bytes());
            offset += bucket.len() as u64;
        }
        for bucket in &self.buckets {
            bytes.extend_from_slice(bucket);
        }
        bytes
    }
}

/// A serialized lookup's table, checked to be whole.
#[derive(Debug, Clone, Copy)]
pub struct Table<'a>(&'a [u8]);

impl<'a> Table<'a> {
    pub fn new(bytes: &'a [u8]) -> Option<Table<'a>> {
        (bytes.len() == TABLE_BYTES).then_some(Table(bytes))
    }

    /// The root the table's bucket hashes give.
    pub fn root(&self) -> String {
        root_of(self.0.chunks_exact(ROW).map(|row| &row[..32]))
    }

    /// Where bucket `index`'s entries are (offset, length) and the hash they must have.
    pub fn bucket(&self, index: usize) -> Option<(u64, usize, &'a [u8])> {
        let row = self.0.get(index * ROW..(index + 1) * ROW)?;
        let offset = u64::from_le_bytes(row[32..40].try_into().ok()?);
        let length = usize::try_from(u64::from_le_bytes(row[40..48].try_into().ok()?)).ok()?;
        Some((offset, length, &row[..32]))
    }
}

/// Whether `entries` are what a table row's hash says.
pub fn bucket_matches(entries: &[u8], expected: &[u8]) -> bool {
    hash(entries).as_slice() == expected
}

/// The entries of a bucket (checked against its hash by the caller).
pub fn entries(bucket: &[u8]) -> impl Iterator<Item = Entry<'_>> {
    bucket.split(|&b| b == b'\n').filter_map(|raw| {
        let raw = std::str::from_utf8(raw).ok()?;
        let (fingerprint, rest) = raw.split_once('\t')?;
        let (person, line) = rest.split_once('\t')?;
        let (user, via): (String, Vec<String>) = serde_json::from_str(person).ok()?;
        Some(Entry {
            fingerprint,
            user,
            via,
            line,
        })
    })
}

fn hash(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn root_of<H: AsRef<[u8]>>(hashes: impl Iterator<Item = H>) -> String {
    let mut root = Sha256::new();
    root.update(ROOT_TAG);
    for hash in hashes {
        root.update(hash.as_ref());
    }
    hex::encode(root.finalize())
}

/// Whether a published line carries `cert-authority` (in its options, as sshd reads them).
fn is_cert_authority(line: &str) -> bool {
    if !line.to_ascii_lowercase().contains("cert-authority") {
        return false;
    }
    let Ok((options, _)) = split_options(line.trim_start()) else {
        return false;
    };
    parse_options(options)
        .map(|options| options.iter().any(|o| o.name == "cert-authority"))
        .unwrap_or(false)
}

/// What a group's seal signs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement<'a> {
    pub deployment: &'a str,
    pub group: &'a str,
    pub generation: u64,
    pub not_after: &'a str,
    /// Hex SHA-256 of the group's file.
    pub sha256: &'a str,
    /// Hex root of the group's [`Lookup`].
    pub lookup: &'a str,
    /// The index's canary line (empty: none), so a login serves the canary it was signed with.
    pub canary: &'a str,
}

impl Statement<'_> {
    /// The exact bytes signed: one `name: value` line each, in this order. Values come from a
    /// verified index or a cache whose seal is being checked; a line break in one would only
    /// make the check fail.
    pub fn text(&self) -> String {
        format!(
            "{STATEMENT_TAG}\ndeployment: {}\ngroup: {}\ngeneration: {}\nnot_after: {}\nsha256: {}\nlookup: {}\ncanary: {}\n",
            self.deployment,
            self.group,
            self.generation,
            self.not_after,
            self.sha256,
            self.lookup,
            self.canary
        )
    }

    /// The seal as the index records it: `{lookup root} {signature}`, the signature being the
    /// SSHSIG armor's base64 without its frame and line breaks.
    pub fn seal(&self, signer: &Signer) -> Result<String, SigningError> {
        let armored = signer.sign(self.text().as_bytes())?;
        let body: String = armored
            .lines()
            .filter(|line| !line.starts_with("-----"))
            .collect();
        Ok(format!("{} {body}", self.lookup))
    }

    /// Checks `signature` (the second half of a seal) over this statement.
    pub fn verify(&self, verifier: &Verifier, signature: &str) -> Result<(), SigningError> {
        let mut armored = String::with_capacity(signature.len() + 80);
        armored.push_str("-----BEGIN SSH SIGNATURE-----\n");
        for chunk in signature.as_bytes().chunks(70) {
            armored.push_str(std::str::from_utf8(chunk).unwrap_or_default());
            armored.push('\n');
        }
        armored.push_str("-----END SSH SIGNATURE-----\n");
        verifier.verify(self.text().as_bytes(), &armored)
    }
}

/// A seal's two halves: the lookup root it names and its signature.
pub fn split_seal(seal: &str) -> Option<(&str, &str)> {
    seal.split_once(' ')
}

/// Seals every group of `index`, the root of each group's lookup taken from `roots` (by the
/// file's SHA-256); a group without a root is left unsealed.
pub fn seal_with_roots(
    index: &mut Index,
    roots: &HashMap<String, String>,
    signer: &Signer,
) -> anyhow::Result<()> {
    let deployment = index.deployment.clone().unwrap_or_default();
    let not_after = index.not_after.clone().unwrap_or_default();
    let canary = index.canary.clone().unwrap_or_default();
    let generation = index.generation;
    for (name, entry) in &mut index.groups {
        let Some(root) = roots.get(&entry.sha256) else {
            entry.seal = None;
            continue;
        };
        let statement = Statement {
            deployment: &deployment,
            group: name,
            generation,
            not_after: &not_after,
            sha256: &entry.sha256,
            lookup: root,
            canary: &canary,
        };
        entry.seal = Some(
            statement
                .seal(signer)
                .with_context(|| format!("sealing access group {name}"))?,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bucket::group_file::block_header;

    const BOB: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOPAo/RxVnDzNjGvP41+SlwXlH4IbNrQebofz9HvuaWq bob@desk";
    const CAROL: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ+IR8TskynvftW3EfRyCVskOiAVP6iaiVeXwIV7bhM8 carol@host";

    fn fingerprint(line: &str) -> String {
        crate::bucket::canary_line::fingerprint(line).unwrap()
    }

    fn file() -> Vec<u8> {
        format!(
            "# keyhole access group web: generated, do not edit\n{}{BOB}\n{}cert-authority {CAROL}\n",
            block_header("bob", &["Web Team"]),
            block_header("carol", &[] as &[&str]),
        )
        .into_bytes()
    }

    #[test]
    fn a_key_is_found_in_its_bucket_with_its_person_and_ca_lines_apart() {
        let lookup = Lookup::build(&file());
        let bob = fingerprint(BOB);
        let found: Vec<Entry> = entries(lookup.bucket(bucket_of(&bob))).collect();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].fingerprint, bob);
        assert_eq!(found[0].user, "bob");
        assert_eq!(found[0].via, ["Web Team"]);
        assert_eq!(found[0].line, BOB);
        let ca: Vec<Entry> = entries(lookup.bucket(CA_BUCKET)).collect();
        assert_eq!(ca.len(), 1);
        assert_eq!(ca[0].line, format!("cert-authority {CAROL}"));
        // The CA line is not in its fingerprint's bucket.
        assert!(
            entries(lookup.bucket(bucket_of(&fingerprint(CAROL))))
                .all(|entry| entry.user != "carol")
        );
    }

    #[test]
    fn the_table_gives_the_same_root_and_each_bucket_checks_out() {
        let lookup = Lookup::build(&file());
        let bytes = lookup.to_bytes();
        let table = Table::new(&bytes[..TABLE_BYTES]).unwrap();
        assert_eq!(table.root(), lookup.root());
        let index = bucket_of(&fingerprint(BOB));
        let (offset, length, expected) = table.bucket(index).unwrap();
        let entries = &bytes[offset as usize..offset as usize + length];
        assert!(bucket_matches(entries, expected));
        assert!(!bucket_matches(b"ssh-ed25519 AAAA mallory\n", expected));
        // Another file, another root.
        assert_ne!(Lookup::build(BOB.as_bytes()).root(), lookup.root());
    }

    #[test]
    fn a_seal_verifies_only_over_the_statement_it_was_made_for() {
        use ssh_key::private::{Ed25519Keypair, KeypairData};
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let key = ssh_key::PrivateKey::new(
            KeypairData::from(Ed25519Keypair::from_seed(&[3; 32])),
            "test",
        )
        .unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, key.to_openssh(ssh_key::LineEnding::LF).unwrap()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let signer = Signer::load(&path).unwrap();
        let verifier = Verifier::parse(&signer.public_key()).unwrap();
        let root = Lookup::build(&file()).root();
        let statement = Statement {
            deployment: "s3://keys/",
            group: "web",
            generation: 7,
            not_after: "2030-01-01T00:00:00Z",
            sha256: "ab",
            lookup: &root,
            canary: "",
        };
        let seal = statement.seal(&signer).unwrap();
        let (named_root, signature) = split_seal(&seal).unwrap();
        assert_eq!(named_root, root);
        statement.verify(&verifier, signature).unwrap();
        for changed in [
            Statement {
                generation: 6,
                ..statement.clone()
            },
            Statement {
                group: "db",
                ..statement.clone()
            },
            Statement {
                not_after: "2031-01-01T00:00:00Z",
                ..statement.clone()
            },
            Statement {
                canary: "ssh-ed25519 AAAA",
                ..statement.clone()
            },
        ] {
            assert!(changed.verify(&verifier, signature).is_err(), "{changed:?}");
        }
    }
}
