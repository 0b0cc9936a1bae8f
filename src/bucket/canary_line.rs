//! The audit canary's line as the signed index ships it (see [`crate::canary`] for the canary
//! itself): what every instance serves first and attributes to the canary, and what the
//! publisher keeps out of every member's file.

use crate::bucket::group_file::any_key_policy;
use crate::keys;

/// What the canary's forced command prints; a probe is accepted only when it sees it.
pub const MARKER: &str = "keyhole-canary-ok";

/// How `whois` and login attribution name the canary key.
pub const NAME: &str = "the keyhole audit canary";

/// The options every instance serves the canary key with.
pub const OPTIONS: &str = "restrict,command=\"echo keyhole-canary-ok\"";

/// The fingerprint of a canary line (as shipped in the index).
pub fn fingerprint(line: &str) -> Option<String> {
    keys::parse_authorized_keys(line, &any_key_policy())
        .keys
        .pop()
        .map(|key| key.fingerprint.as_str().to_owned())
}
