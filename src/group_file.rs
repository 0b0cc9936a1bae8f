//! Reading a published access group file back: its people, the chain that gives each of them
//! access, and their key lines.
//!
//! A group file (see `render`) is a header line, then one block per person: a `# user` or
//! `# user via A > B` line followed by that person's key lines. The file is therefore its own
//! record of who had access and why, and everything that needs the published state per person
//! reads it from here: the publisher explaining a change (who left, through which group), an
//! unreadable home's keys carried over, `[deny]` applied to a published file when the guard
//! holds everything else, instance attribution, and `whois`.
//!
//! Parsing is only ever done on bytes whose SHA-256 the caller checked against a verified index:
//! this module trusts its input's structure, never its origin.

use std::collections::BTreeSet;

use crate::keys::{self, KeyPolicy};
use crate::resolve::VIA_SEPARATOR;

/// The first line of every group file starts with this.
pub const HEADER_PREFIX: &str = "# keyhole access group ";

/// One person's block in a published group file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub user: String,
    /// The group chain that gave the access (empty: named directly).
    pub via: Vec<String>,
    /// The key lines, exactly as published, each with its fingerprint (`None`: the line does not
    /// decode, which a keyhole publisher never writes).
    pub keys: Vec<(String, Option<String>)>,
}

impl Block {
    pub fn fingerprints(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().filter_map(|(_, fp)| fp.as_deref())
    }
}

/// A published group file, as blocks in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishedFile {
    pub blocks: Vec<Block>,
}

impl PublishedFile {
    /// Parses a group file. Lines before the first person's block (other than the header) are
    /// ignored: they grant nothing a person could be named for.
    pub fn parse(body: &[u8]) -> PublishedFile {
        // The publisher validated every key under its own key policy, which a reader may not
        // know: here a key only needs to decode, to be named by its fingerprint.
        let any_key = any_key_policy();
        let mut blocks: Vec<Block> = Vec::new();
        for line in String::from_utf8_lossy(body).lines() {
            if line.starts_with(HEADER_PREFIX) || line.trim().is_empty() {
                continue;
            }
            if let Some(header) = line.strip_prefix("# ") {
                let (user, via) = match header.split_once(" via ") {
                    Some((user, chain)) => (
                        user,
                        chain.split(VIA_SEPARATOR).map(str::to_owned).collect(),
                    ),
                    None => (header, Vec::new()),
                };
                blocks.push(Block {
                    user: user.to_owned(),
                    via,
                    keys: Vec::new(),
                });
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let Some(block) = blocks.last_mut() else {
                continue;
            };
            let fingerprint = keys::parse_authorized_keys(line, &any_key)
                .keys
                .pop()
                .map(|key| key.fingerprint.as_str().to_owned());
            block.keys.push((line.to_owned(), fingerprint));
        }
        PublishedFile { blocks }
    }

    /// The person's block, if they had keys in this file.
    pub fn block(&self, user: &str) -> Option<&Block> {
        self.blocks.iter().find(|block| block.user == user)
    }

    /// People with at least one key in the file.
    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.blocks
            .iter()
            .filter(|block| !block.keys.is_empty())
            .map(|block| block.user.as_str())
    }

    /// Every fingerprint in the file.
    pub fn fingerprints(&self) -> BTreeSet<&str> {
        self.blocks.iter().flat_map(Block::fingerprints).collect()
    }
}

/// A key policy that accepts every key type keyhole knows, any size, any option.
pub fn any_key_policy() -> KeyPolicy {
    KeyPolicy {
        allowed_types: keys::SUPPORTED_KEY_TYPES
            .iter()
            .map(|t| (*t).to_owned())
            .collect(),
        min_rsa_bits: 0,
        forbidden_options: BTreeSet::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOB: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOPAo/RxVnDzNjGvP41+SlwXlH4IbNrQebofz9HvuaWq bob@desk";
    const CAROL: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ+IR8TskynvftW3EfRyCVskOiAVP6iaiVeXwIV7bhM8 carol@host";

    #[test]
    fn blocks_carry_the_person_their_chain_and_their_lines() {
        let body = format!(
            "{HEADER_PREFIX}web: generated, do not edit\n# bob via Web Team > Contractors\n{BOB}\n# carol\nfrom=\"10.0.0.0/8\" {CAROL}\n"
        );
        let file = PublishedFile::parse(body.as_bytes());
        assert_eq!(file.blocks.len(), 2);
        let bob = file.block("bob").unwrap();
        assert_eq!(bob.via, ["Web Team", "Contractors"]);
        assert_eq!(bob.keys[0].0, BOB);
        assert!(bob.keys[0].1.as_deref().unwrap().starts_with("SHA256:"));
        let carol = file.block("carol").unwrap();
        assert!(carol.via.is_empty());
        assert_eq!(carol.keys[0].0, format!("from=\"10.0.0.0/8\" {CAROL}"));
        assert_eq!(file.users().collect::<Vec<_>>(), ["bob", "carol"]);
        assert_eq!(file.fingerprints().len(), 2);
        assert_eq!(file.block("dave"), None);
    }
}
