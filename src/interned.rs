//! Shared strings for a plan that names the same people and keys many times.
//!
//! On a dense directory a person is in dozens of access groups, so a first publish lists each
//! person and each of their keys once per group they join (10,000 people: 330,000 "new member"
//! entries and 540,000 added keys). Each distinct name and fingerprint is stored once, and every
//! entry of the plan points at it: 16 bytes an entry instead of a string of its own.

use std::collections::HashSet;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use serde::{Serialize, Serializer};

/// An immutable string shared by every place that names it; reads, prints and serializes as the
/// string itself.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Shared(Arc<str>);

impl Shared {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for Shared {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl Serialize for Shared {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl From<&str> for Shared {
    fn from(text: &str) -> Shared {
        Shared(Arc::from(text))
    }
}

impl PartialEq<str> for Shared {
    fn eq(&self, other: &str) -> bool {
        *self.0 == *other
    }
}

impl PartialEq<&str> for Shared {
    fn eq(&self, other: &&str) -> bool {
        *self.0 == **other
    }
}

/// Hands out one [`Shared`] per distinct string.
#[derive(Debug, Default)]
pub struct Interner {
    known: HashSet<Arc<str>>,
}

impl Interner {
    pub fn get(&mut self, text: &str) -> Shared {
        if let Some(known) = self.known.get(text) {
            return Shared(Arc::clone(known));
        }
        let shared: Arc<str> = Arc::from(text);
        self.known.insert(Arc::clone(&shared));
        Shared(shared)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_text_is_stored_once_and_reads_as_itself() {
        let mut interner = Interner::default();
        let (a, b) = (interner.get("SHA256:abc"), interner.get("SHA256:abc"));
        assert!(Arc::ptr_eq(&a.0, &b.0));
        assert!(!Arc::ptr_eq(&a.0, &interner.get("SHA256:abd").0));
        assert_eq!(a, "SHA256:abc");
        assert_eq!(serde_json::to_string(&a).unwrap(), "\"SHA256:abc\"");
        assert_eq!(format!("{a} {a:?}"), "SHA256:abc \"SHA256:abc\"");
    }
}
