//! The access group name rule: a name becomes part of an S3 key and of an instance's settings,
//! so the policy, the publisher and every instance check it the same way.

/// Why `name` cannot be an access group name (it becomes part of an S3 key and of the
/// instance settings), or `None` when it is fine: `^[a-z0-9][a-z0-9._-]{0,62}$`.
pub fn access_group_name_problem(name: &str) -> Option<String> {
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c);
    let starts_well = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if starts_well && name.len() <= 63 && name.chars().all(allowed) {
        return None;
    }
    let rule = "access group names are 1 to 63 characters of a-z, 0-9, `.`, `_`, `-`, starting \
                with a letter or digit";
    let suggestion = suggest_access_group_name(name)
        .filter(|suggested| suggested != name)
        .map(|suggested| format!("; did you mean `{suggested}`?"))
        .unwrap_or_default();
    Some(format!(
        "invalid access group name `{name}`: {rule}{suggestion}"
    ))
}

/// The obvious fix for a near-miss name (`Web Prod` → `web-prod`), if it yields a valid name.
fn suggest_access_group_name(name: &str) -> Option<String> {
    let suggested: String = name
        .trim()
        .chars()
        .map(|c| match c {
            ' ' => '-',
            c => c.to_ascii_lowercase(),
        })
        .collect();
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c);
    let valid = suggested
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && suggested.len() <= 63
        && suggested.chars().all(allowed);
    valid.then_some(suggested)
}
