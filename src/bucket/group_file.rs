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
//!
//! Names cannot forge that structure. In a block's header line a person's name is written with
//! `%`, spaces, `>` and every control or bidi/format character percent-encoded, and a group's
//! name in the chain with `%`, `>` and those characters encoded (spaces kept: "Web Team"). So
//! the first ` via ` always ends the person's name, ` > ` always separates two groups, and no
//! name (an AD account called `alice via Ops`, or `keyhole access group x`) can make a line
//! that reads as someone else's block or as the file's header. Ordinary names are written as
//! they are, so the encoding changes no existing file.

use std::collections::{BTreeSet, HashMap};

use crate::keys::{self, KeyPolicy};

/// Between the groups of a `via` chain, wherever a chain is shown: group files, reports, logs.
pub const VIA_SEPARATOR: &str = " > ";

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

/// Fingerprints of key lines a run already knows, by the exact text of the line: the lines of
/// the keys it renders itself. A published line found here is not decoded again: decoding every
/// line of the groups that changed was most of the plan of a one-person change (250,000 lines
/// for a person in the 16 groups that hold everyone of 10,000). The same text is the same key,
/// so the answer is the one decoding would give; any other line is decoded.
#[derive(Debug, Default)]
pub struct KnownLines(HashMap<Box<str>, Box<str>>);

impl KnownLines {
    pub fn new<'a>(lines: impl Iterator<Item = (String, &'a str)>) -> KnownLines {
        KnownLines(
            lines
                .map(|(line, fingerprint)| (line.into(), fingerprint.into()))
                .collect(),
        )
    }

    pub fn fingerprint(&self, line: &str) -> Option<&str> {
        self.0.get(line).map(|fingerprint| &**fingerprint)
    }
}

impl PublishedFile {
    /// Parses a group file. Lines before the first person's block (other than the header) are
    /// ignored: they grant nothing a person could be named for.
    pub fn parse(body: &[u8]) -> PublishedFile {
        PublishedFile::parse_knowing(body, &KnownLines::default())
    }

    /// [`PublishedFile::parse`], taking the fingerprint of each line `known` has from it.
    pub fn parse_knowing(body: &[u8], known: &KnownLines) -> PublishedFile {
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
                    Some((user, chain)) => (user, chain.split(VIA_SEPARATOR).map(decode).collect()),
                    None => (header, Vec::new()),
                };
                blocks.push(Block {
                    user: decode(user),
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
            let fingerprint = match known.fingerprint(line) {
                Some(fingerprint) => Some(fingerprint.to_owned()),
                None => keys::parse_authorized_keys(line, &any_key)
                    .keys
                    .pop()
                    .map(|key| key.fingerprint.as_str().to_owned()),
            };
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

/// The line that opens a person's block: `# bob`, or `# bob via Web Team > Contractors`, names
/// encoded (see the module doc), with its newline.
pub fn block_header<S: AsRef<str>>(user: &str, via: &[S]) -> String {
    let mut line = String::new();
    push_block_header(&mut |piece| line.push_str(piece), user, via);
    line
}

/// [`block_header`] handed over piece by piece, without building the line (a run hashes one per
/// membership, hundreds of thousands).
pub fn push_block_header<S: AsRef<str>>(push: &mut impl FnMut(&str), user: &str, via: &[S]) {
    push("# ");
    push(&encode(user, true));
    for (i, group) in via.iter().enumerate() {
        push(if i == 0 { " via " } else { VIA_SEPARATOR });
        push(&encode(group.as_ref(), false));
    }
    push("\n");
}

/// Whether `c` must be percent-encoded in a name (spaces only in a person's name).
fn needs_encoding(c: char, person: bool) -> bool {
    matches!(c, '%' | '>')
        || (person && c == ' ')
        || c.is_control()
        || matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{2028}' | '\u{2029}' | '\u{FEFF}')
}

fn encode(name: &str, person: bool) -> std::borrow::Cow<'_, str> {
    if !name.chars().any(|c| needs_encoding(c, person)) {
        return std::borrow::Cow::Borrowed(name);
    }
    let mut encoded = String::with_capacity(name.len() + 8);
    for c in name.chars() {
        if needs_encoding(c, person) {
            let mut utf8 = [0; 4];
            for byte in c.encode_utf8(&mut utf8).bytes() {
                encoded.push_str(&format!("%{byte:02X}"));
            }
        } else {
            encoded.push(c);
        }
    }
    std::borrow::Cow::Owned(encoded)
}

/// Reverses [`encode`]; a `%` not followed by two hex digits stays as it is.
fn decode(text: &str) -> String {
    if !text.contains('%') {
        return text.to_owned();
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|pair| std::str::from_utf8(pair).ok())
            .and_then(|pair| u8::from_str_radix(pair, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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

    #[test]
    fn a_known_line_is_taken_from_what_is_known_and_any_other_is_decoded() {
        // A made-up fingerprint for BOB's line shows which lines were not decoded again.
        let known = KnownLines::new([(BOB.to_owned(), "SHA256:known")].into_iter());
        let body = format!("# bob\n{BOB}\n# carol\n{CAROL}\n");
        let file = PublishedFile::parse_knowing(body.as_bytes(), &known);
        assert_eq!(file.blocks[0].keys[0].1.as_deref(), Some("SHA256:known"));
        assert_eq!(
            file.blocks[1].keys[0].1,
            PublishedFile::parse(body.as_bytes()).blocks[1].keys[0].1
        );
    }

    #[test]
    fn names_cannot_forge_a_block_or_the_header() {
        // An AD account named like a block with a chain, one named like the file header, and a
        // group whose name holds the chain separator and a line break.
        let via = ["Ops > Admins\nsneaky".to_string(), "100% Team".to_string()];
        let mut body = format!("{HEADER_PREFIX}web: generated, do not edit\n");
        body.push_str(&block_header("alice via Ops", &via));
        body.push_str(BOB);
        body.push('\n');
        body.push_str(&block_header("keyhole access group web", &[] as &[String]));
        body.push_str(CAROL);
        body.push('\n');
        assert!(
            body.contains("# alice%20via%20Ops via Ops %3E Admins%0Asneaky > 100%25 Team\n"),
            "{body}"
        );
        let file = PublishedFile::parse(body.as_bytes());
        assert_eq!(file.blocks.len(), 2, "{file:?}");
        assert_eq!(file.blocks[0].user, "alice via Ops");
        assert_eq!(file.blocks[0].via, via);
        assert_eq!(file.blocks[1].user, "keyhole access group web");
        assert_eq!(file.blocks[1].keys.len(), 1);
        // Ordinary names are written as they are.
        assert_eq!(block_header("bob", &["Web Team"]), "# bob via Web Team\n");
    }
}
