//! The one digest keyhole names objects by, on both sides.

use sha2::{Digest as _, Sha256};

/// Lower-case hex SHA-256, as the index records it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
