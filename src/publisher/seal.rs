//! The publisher's side of the per-group seals (see [`crate::bucket::group_lookup`]): just before the
//! commit, every group the index names is sealed for this index's generation, `not_after`,
//! deployment and canary.
//!
//! A seal needs the root of the group file's lookup. For a file the previous index sealed, the
//! root is carried (the same SHA-256 is the same bytes, so the same root); for a file this run
//! wrote it was computed at the write; for any other the file is rendered again or, failing that, read back from the bucket and
//! checked against the index's SHA-256 (a first publish after an upgrade reads each group once;
//! a `[deny]`-only publish reads the files it rewrote). An unsigned index carries no seals.

use std::collections::HashMap;

use anyhow::Context as _;

use crate::bucket::group_lookup::{Lookup, seal_with_roots, split_seal};
use crate::bucket::index::Index;
use crate::bucket::signing::Signer;
use crate::bucket::store::{Fetched, ObjectStore as _};
use crate::digest::sha256_hex;
use crate::publisher::prepare::Prepared;

/// `index` with a seal on every group (none without `signer`). `written`: the roots of the files
/// this run wrote, by SHA-256, computed when they were rendered for the write.
pub(crate) async fn sealed(
    prepared: &Prepared,
    index: &Index,
    signer: Option<&Signer>,
    written: HashMap<String, String>,
) -> anyhow::Result<Index> {
    let mut index = index.clone();
    let Some(signer) = signer else {
        for entry in index.groups.values_mut() {
            entry.seal = None;
        }
        return Ok(index);
    };
    let mut roots: HashMap<String, String> = prepared
        .published
        .index
        .groups
        .values()
        .filter_map(|entry| {
            let (root, _) = split_seal(entry.seal.as_deref()?)?;
            Some((entry.sha256.clone(), root.to_owned()))
        })
        .collect();
    roots.extend(written);
    let unknown: Vec<(String, String)> = index
        .groups
        .iter()
        .filter(|(_, entry)| !roots.contains_key(&entry.sha256))
        .map(|(name, entry)| (name.clone(), entry.sha256.clone()))
        .collect();
    if !unknown.is_empty() {
        let renderer = prepared.renderer();
        let access_groups = &prepared.gathered.resolution.access_groups;
        for (name, sha256) in unknown {
            let rendered = access_groups
                .get(&name)
                .map(|membership| renderer.file(&name, membership, prepared.carried.get(&name)))
                .filter(|file| file.sha256 == sha256);
            let body = match rendered {
                Some(file) => file.body.into_bytes(),
                None => match read_back(prepared, &index, &name, &sha256).await {
                    Ok(body) => body,
                    // A missing or altered object never blocks a publish (a `[deny]` above
                    // all): the group goes unsealed, and instances check it against the whole
                    // signed index, as before seals.
                    Err(error) => {
                        tracing::error!(group = name, "not sealed: {error:#}");
                        continue;
                    }
                },
            };
            roots.insert(sha256, Lookup::build(&body).root());
        }
    }
    seal_with_roots(&mut index, &roots, signer)?;
    Ok(index)
}

/// A group's file as the bucket holds it, checked against the SHA-256 the index records.
async fn read_back(
    prepared: &Prepared,
    index: &Index,
    name: &str,
    sha256: &str,
) -> anyhow::Result<Vec<u8>> {
    let key = prepared.deployment.layout.group(index, name, sha256);
    let Fetched::Object(object) = prepared
        .deployment
        .store
        .get(&key, None)
        .await
        .with_context(|| format!("reading {key} back to seal it; the index was not committed"))?
    else {
        anyhow::bail!(
            "{key} is missing: cannot seal access group {name}; the index was not committed"
        );
    };
    if sha256_hex(&object.body) != sha256 {
        anyhow::bail!(
            "{key} does not hash to what the index records: cannot seal access group {name}; the index was not committed"
        );
    }
    Ok(object.body)
}
