//! Validating a policy completely: every problem (syntax, unknown keys, names AD can never
//! match, duplicates, dangling references) is found in one pass and reported with its file, line
//! and column, and what the fix is. [`super::parse`] runs it.

use super::*;

/// Every rule over a policy that parsed as TOML: the policy, or every problem found.
pub(super) fn check(source: Source<'_>, root: &DeTable<'_>) -> Result<Checked, Invalid> {
    let mut checker = Checker {
        source,
        diagnostics: Vec::new(),
    };
    let draft = checker.root(root);
    checker.cross_check(&draft);

    let mut diagnostics = std::mem::take(&mut checker.diagnostics);
    // Stable: problems found at the same spot keep the order they were found in.
    diagnostics.sort_by_key(|d| (d.line, d.column));
    if diagnostic::has_errors(&diagnostics) {
        return Err(Invalid { diagnostics });
    }
    let grants = checker.grants(&draft);
    let key_files = checker.key_file_entries(&draft);
    Ok(Checked {
        policy: draft.into_policy(),
        warnings: diagnostics,
        grants,
        key_files,
    })
}

const ROOT_KEYS: &[&str] = &["everywhere", "access_groups", "deny", "automation"];
const EVERYWHERE_KEYS: &[&str] = &["users", "groups"];
const ACCESS_GROUP_KEYS: &[&str] = &["description", "users", "groups", "options"];
const AUTOMATION_KEYS: &[&str] = &[
    "key_files",
    "access_groups",
    "everywhere",
    "owner",
    "ad_account",
];
const GRANT_KEYS: &[&str] = &["name", "until"];
const DENY_KEYS: &[&str] = &["users", "fingerprints"];

/// Characters AD forbids in a sAMAccountName.
const FORBIDDEN_IN_SAM_ACCOUNT_NAME: &str = "\"/\\[]:;|=,+*?<>";

/// The prefix of a fingerprint as OpenSSH prints it.
const FINGERPRINT_PREFIX: &str = "SHA256:";

/// A name as written, with where it was written.
#[derive(Debug, Clone)]
struct Named {
    name: String,
    span: Range<usize>,
    /// For a `{ name = ..., until = ... }` entry: when it ends.
    until: Option<Until>,
}

impl Named {
    /// AD names are case-insensitive; this is the form two names are compared in.
    fn key(&self) -> String {
        self.name.to_lowercase()
    }
}

#[derive(Debug, Default)]
struct DraftPrincipals {
    users: Vec<Named>,
    groups: Vec<Named>,
}

impl DraftPrincipals {
    fn into_principals(self) -> Principals {
        let until = |names: &[Named]| -> BTreeMap<String, Until> {
            names
                .iter()
                .filter_map(|n| Some((n.key(), n.until.clone()?)))
                .collect()
        };
        Principals {
            users_until: until(&self.users),
            groups_until: until(&self.groups),
            users: self.users.into_iter().map(|n| n.name).collect(),
            groups: self.groups.into_iter().map(|n| n.name).collect(),
        }
    }
}

#[derive(Debug)]
struct DraftAccessGroup {
    name: String,
    description: Option<String>,
    principals: DraftPrincipals,
    options: Vec<Named>,
}

#[derive(Debug)]
struct DraftAutomation {
    name: Named,
    key_files: Vec<Named>,
    access_groups: Vec<Named>,
    everywhere: bool,
    owner: String,
    ad_account: Option<String>,
}

/// What was read from the file, with spans kept for the checks that span several tables.
#[derive(Debug, Default)]
struct Draft {
    everywhere: DraftPrincipals,
    access_groups: Vec<DraftAccessGroup>,
    deny_users: Vec<Named>,
    deny_fingerprints: Vec<Named>,
    automation: Vec<DraftAutomation>,
}

impl Draft {
    fn into_policy(self) -> Policy {
        Policy {
            everywhere: self.everywhere.into_principals(),
            access_groups: self
                .access_groups
                .into_iter()
                .map(|group| {
                    let access_group = AccessGroup {
                        name: group.name.clone(),
                        description: group.description,
                        principals: group.principals.into_principals(),
                        options: group.options.into_iter().map(|n| n.name).collect(),
                    };
                    (group.name, access_group)
                })
                .collect(),
            deny: Deny {
                users: self.deny_users.into_iter().map(|n| n.name).collect(),
                fingerprints: self.deny_fingerprints.into_iter().map(|n| n.name).collect(),
            },
            automation: self
                .automation
                .into_iter()
                .map(|a| {
                    let automation = Automation {
                        name: a.name.name.clone(),
                        key_files: a.key_files.into_iter().map(|n| n.name).collect(),
                        access_groups: a.access_groups.into_iter().map(|n| n.name).collect(),
                        everywhere: a.everywhere,
                        owner: a.owner,
                        ad_account: a.ad_account,
                    };
                    (a.name.name, automation)
                })
                .collect(),
        }
    }
}

/// Whether a list holds users or groups: changes the wording, never the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PrincipalKind {
    User,
    Group,
}

impl PrincipalKind {
    fn noun(self) -> &'static str {
        match self {
            PrincipalKind::User => "user",
            PrincipalKind::Group => "group",
        }
    }
}

struct Checker<'a> {
    source: Source<'a>,
    diagnostics: Vec<Diagnostic>,
}

impl Checker<'_> {
    fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        let diagnostic = self.source.error(span, message);
        self.diagnostics.push(diagnostic);
    }

    fn warning(&mut self, span: Range<usize>, message: impl Into<String>) {
        let diagnostic = self.source.warning(span, message);
        self.diagnostics.push(diagnostic);
    }

    fn root(&mut self, root: &DeTable<'_>) -> Draft {
        let mut draft = Draft::default();
        let mut saw_access_groups = false;
        for (key, value) in root.iter() {
            match key.get_ref().as_ref() {
                "everywhere" => {
                    if let Some(table) = self.table(key, value, "everywhere", "[everywhere]") {
                        self.unknown_keys(table, EVERYWHERE_KEYS, "[everywhere]");
                        draft.everywhere = self.principals(table, "[everywhere]");
                    }
                }
                "access_groups" => {
                    saw_access_groups = true;
                    if let Some(table) =
                        self.table(key, value, "access_groups", "[access_groups.NAME]")
                    {
                        draft.access_groups = self.access_groups(key.span(), table);
                    }
                }
                "deny" => {
                    if let Some(table) = self.table(key, value, "deny", "[deny]") {
                        self.deny(table, &mut draft);
                    }
                }
                "automation" => {
                    if let Some(table) = self.table(key, value, "automation", "[automation.NAME]") {
                        draft.automation = self.automations(table);
                    }
                }
                unknown => self.unknown_root_key(key.span(), unknown, value),
            }
        }
        if !saw_access_groups {
            self.error(
                0..0,
                "no `[access_groups]`: publishing a policy without access groups would remove \
                 everyone's access; add at least one `[access_groups.NAME]` table",
            );
        }
        draft
    }

    /// `value` as a table, or an error naming the key by its dotted `path` and showing the
    /// `header` that would have made it a table.
    fn table<'t, 'i>(
        &mut self,
        key: &Spanned<std::borrow::Cow<'i, str>>,
        value: &'t Spanned<DeValue<'i>>,
        path: &str,
        header: &str,
    ) -> Option<&'t DeTable<'i>> {
        match value.get_ref() {
            DeValue::Table(table) => Some(table),
            other => {
                // `[[access_groups]]` is the classic slip: TOML's array-of-tables syntax.
                let hint = match other {
                    DeValue::Array(items)
                        if !items.is_empty() && items.iter().all(|i| i.get_ref().is_table()) =>
                    {
                        " (`[[...]]` makes an array of tables; use single brackets)"
                    }
                    _ => "",
                };
                self.error(
                    key.span(),
                    format!(
                        "`{path}` must be a table, written `{header}`; found {}{hint}",
                        a(other.type_str())
                    ),
                );
                None
            }
        }
    }

    fn unknown_root_key(&mut self, span: Range<usize>, key: &str, value: &Spanned<DeValue<'_>>) {
        let hint = match did_you_mean(key, ROOT_KEYS) {
            Some(known) => format!("; did you mean `{known}`?"),
            // `[web-prod]` at the top level is the likeliest mistake of all: an access group
            // written without its `access_groups.` prefix.
            None if value.get_ref().is_table() && access_group_name_problem(key).is_none() => {
                format!("; did you mean `[access_groups.{key}]`?")
            }
            None => format!("; expected one of {}", list(ROOT_KEYS)),
        };
        self.error(span, format!("unknown key `{key}` at the top level{hint}"));
    }

    fn unknown_keys(&mut self, table: &DeTable<'_>, known: &[&str], context: &str) {
        for (key, _) in table.iter() {
            let key_name: &str = key.get_ref();
            if known.contains(&key_name) {
                continue;
            }
            let hint = match did_you_mean(key_name, known) {
                Some(known) => format!("did you mean `{known}`?"),
                None => format!("expected one of {}", list(known)),
            };
            self.error(
                key.span(),
                format!("unknown key `{key_name}` in {context}; {hint}"),
            );
        }
    }

    fn access_groups(&mut self, span: Range<usize>, table: &DeTable<'_>) -> Vec<DraftAccessGroup> {
        if table.is_empty() {
            self.error(
                span,
                "`[access_groups]` has no access group: publishing it would remove everyone's \
                 access; add at least one `[access_groups.NAME]` table",
            );
            return Vec::new();
        }
        let mut groups = Vec::new();
        for (key, value) in table.iter() {
            let name: &str = key.get_ref();
            if let Some(problem) = access_group_name_problem(name) {
                self.error(key.span(), problem);
            }
            let path = format!("access_groups.{}", display_key(name));
            let context = format!("[{path}]");
            let Some(group) = self.table(key, value, &path, &context) else {
                continue;
            };
            self.unknown_keys(group, ACCESS_GROUP_KEYS, &context);
            let description =
                group
                    .get("description")
                    .and_then(|description| match description.get_ref() {
                        DeValue::String(text) => Some(text.to_string()),
                        other => {
                            self.error(
                                description.span(),
                                format!(
                                    "`description` in {context} must be a string; found {}",
                                    a(other.type_str())
                                ),
                            );
                            None
                        }
                    });
            let principals = self.principals(group, &context);
            // A misspelt `grups = [...]` is already reported as unknown; calling the group empty
            // on top of that would send the reader looking for the wrong problem.
            let misspelt = group
                .iter()
                .filter(|(key, _)| {
                    let key_name: &str = key.get_ref();
                    !ACCESS_GROUP_KEYS.contains(&key_name)
                        && did_you_mean(key_name, &["users", "groups"]).is_some()
                })
                .count();
            let declared = declared_entries(group, "users") + declared_entries(group, "groups");
            if declared + misspelt == 0 {
                self.error(
                    key.span(),
                    format!(
                        "access group `{name}` is empty: give it `users` or `groups` (an empty \
                         group would admit only [everywhere]), or delete it"
                    ),
                );
            }
            let options = match group.get("options") {
                Some(value) => self.group_options(value, &context),
                None => Vec::new(),
            };
            groups.push(DraftAccessGroup {
                name: name.to_owned(),
                description,
                principals,
                options,
            });
        }
        groups
    }

    fn deny(&mut self, table: &DeTable<'_>, draft: &mut Draft) {
        self.unknown_keys(table, DENY_KEYS, "[deny]");
        if let Some(users) = table.get("users") {
            draft.deny_users = self.principal_list(users, PrincipalKind::User, "[deny]");
            // A denial that ends would be a grant in disguise; and an ignored date would mislead.
            let dated: Vec<Range<usize>> = draft
                .deny_users
                .iter()
                .filter(|user| user.until.is_some())
                .map(|user| user.span.clone())
                .collect();
            for span in dated {
                self.error(
                    span,
                    "[deny] entries cannot end (`until`): remove the user from [deny] when the \
                     denial is over",
                );
            }
        }
        if let Some(fingerprints) = table.get("fingerprints") {
            draft.deny_fingerprints = self.fingerprints(fingerprints);
        }
    }

    fn principals(&mut self, table: &DeTable<'_>, context: &str) -> DraftPrincipals {
        let mut principals = DraftPrincipals::default();
        if let Some(users) = table.get("users") {
            principals.users = self.principal_list(users, PrincipalKind::User, context);
        }
        if let Some(groups) = table.get("groups") {
            principals.groups = self.principal_list(groups, PrincipalKind::Group, context);
        }
        principals
    }

    /// The valid names of a `users` or `groups` list; every invalid one is reported.
    fn principal_list(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        kind: PrincipalKind,
        context: &str,
    ) -> Vec<Named> {
        let key = match kind {
            PrincipalKind::User => "users",
            PrincipalKind::Group => "groups",
        };
        let items = match self.grant_list(value, key, context) {
            Some(items) => items,
            None => return Vec::new(),
        };
        let mut seen: HashMap<String, Named> = HashMap::new();
        let mut names = Vec::new();
        for item in items {
            if let Some(problem) = principal_name_problem(&item.name) {
                self.error(
                    item.span.clone(),
                    format!(
                        "{} name {:?} in {context}: {problem}",
                        kind.noun(),
                        item.name
                    ),
                );
                continue;
            }
            if kind == PrincipalKind::User && item.name.contains('@') {
                self.warning(
                    item.span.clone(),
                    format!(
                        "user `{}` in {context} looks like an e-mail address or \
                         userPrincipalName; keyhole matches the sAMAccountName (e.g. `{}`)",
                        item.name,
                        item.name.split('@').next().unwrap_or_default()
                    ),
                );
            }
            if let Some(first) = seen.get(&item.key()) {
                let (line, column) = diagnostic::line_column(self.source.text, first.span.start);
                let case_note = if first.name == item.name {
                    String::new()
                } else {
                    format!(" as `{}`; AD names are case-insensitive", first.name)
                };
                self.error(
                    item.span.clone(),
                    format!(
                        "duplicate {} `{}` in {context} `{key}` (already at {line}:{column}{case_note})",
                        kind.noun(),
                        item.name
                    ),
                );
                continue;
            }
            seen.insert(item.key(), item.clone());
            names.push(item);
        }
        names
    }

    /// The items of a `users`/`groups` list: strings, or `{ name = "...", until = DATE }` tables.
    /// Wrong types are reported and skipped.
    fn grant_list(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        key: &str,
        context: &str,
    ) -> Option<Vec<Named>> {
        let DeValue::Array(array) = value.get_ref() else {
            return self.string_list(value, key, context);
        };
        let mut items = Vec::new();
        for item in array.iter() {
            match item.get_ref() {
                DeValue::String(text) => items.push(Named {
                    name: text.to_string(),
                    span: item.span(),
                    until: None,
                }),
                DeValue::Table(table) => {
                    let entry_context = format!("an entry of `{key}` in {context}");
                    self.unknown_keys(table, GRANT_KEYS, &entry_context);
                    let name = match table.get("name").map(|n| (n.get_ref(), n.span())) {
                        Some((DeValue::String(text), span)) => Some((text.to_string(), span)),
                        Some((other, span)) => {
                            self.error(
                                span,
                                format!(
                                    "`name` in {entry_context} must be a string; found {}",
                                    a(other.type_str())
                                ),
                            );
                            None
                        }
                        None => {
                            self.error(
                                item.span(),
                                format!(
                                    "{entry_context} needs a `name`, like `{{ name = \"carol\", until = 2027-03-31 }}`"
                                ),
                            );
                            None
                        }
                    };
                    let until = match table.get("until") {
                        Some(until) => match until.get_ref() {
                            DeValue::Datetime(datetime) => match until_of(datetime) {
                                Ok(ends_at) => Some(Until {
                                    ends_at,
                                    text: datetime.to_string(),
                                }),
                                Err(problem) => {
                                    self.error(until.span(), format!("{problem} ({entry_context})"));
                                    None
                                }
                            },
                            DeValue::String(text) => {
                                self.error(
                                    until.span(),
                                    format!(
                                        "`until` in {entry_context} must be a TOML date, written without quotes: `until = {text}`"
                                    ),
                                );
                                None
                            }
                            other => {
                                self.error(
                                    until.span(),
                                    format!(
                                        "`until` in {entry_context} must be a date, like `until = 2027-03-31`; found {}",
                                        a(other.type_str())
                                    ),
                                );
                                None
                            }
                        },
                        None => {
                            self.error(
                                item.span(),
                                format!(
                                    "{entry_context} has no `until`: write the plain name when the grant does not end"
                                ),
                            );
                            None
                        }
                    };
                    if let (Some((name, span)), Some(until)) = (name, until) {
                        items.push(Named {
                            name,
                            span,
                            until: Some(until),
                        });
                    }
                }
                other => self.error(
                    item.span(),
                    format!(
                        "`{key}` in {context} must hold only names or `{{ name = ..., until = ... }}` tables; found {}",
                        a(other.type_str())
                    ),
                ),
            }
        }
        Some(items)
    }

    /// An access group's `options`: each entry validated as sshd would read it, and only
    /// restrictions allowed.
    fn group_options(&mut self, value: &Spanned<DeValue<'_>>, context: &str) -> Vec<Named> {
        let Some(items) = self.string_list(value, "options", context) else {
            return Vec::new();
        };
        let mut valid = Vec::new();
        for item in items {
            match crate::keys::merge::group_option_problem(&item.name) {
                Some(problem) => self.error(
                    item.span.clone(),
                    format!("option {:?} in {context}: {problem}", item.name),
                ),
                None => valid.push(item),
            }
        }
        let all: Vec<String> = valid.iter().map(|n| n.name.clone()).collect();
        if let Err(problem) = crate::keys::merge::parse_group_options(&all)
            && let Some(first) = valid.first()
        {
            self.error(
                first.span.clone(),
                format!("`options` in {context}: {problem}"),
            );
            return Vec::new();
        }
        valid
    }

    /// `[automation.NAME]` tables.
    fn automations(&mut self, table: &DeTable<'_>) -> Vec<DraftAutomation> {
        let mut automations = Vec::new();
        for (key, value) in table.iter() {
            let name: &str = key.get_ref();
            if let Some(problem) = access_group_name_problem(name) {
                self.error(
                    key.span(),
                    problem.replace("access group name", "automation account name"),
                );
            }
            let path = format!("automation.{}", display_key(name));
            let context = format!("[{path}]");
            let Some(entry) = self.table(key, value, &path, &context) else {
                continue;
            };
            self.unknown_keys(entry, AUTOMATION_KEYS, &context);
            let key_files = match entry.get("key_files") {
                Some(value) => self.key_files(value, &context),
                None => {
                    self.error(
                        key.span(),
                        format!(
                            "{context} has no `key_files`: list the public key files, relative to the policy, e.g. `key_files = [\"automation/{name}.pub\"]`"
                        ),
                    );
                    Vec::new()
                }
            };
            let access_groups = match entry.get("access_groups") {
                Some(value) => self
                    .string_list(value, "access_groups", &context)
                    .unwrap_or_default(),
                None => Vec::new(),
            };
            let everywhere = match entry.get("everywhere") {
                Some(value) => match value.get_ref() {
                    DeValue::Boolean(flag) => *flag,
                    other => {
                        self.error(
                            value.span(),
                            format!(
                                "`everywhere` in {context} must be true or false; found {}",
                                a(other.type_str())
                            ),
                        );
                        false
                    }
                },
                None => false,
            };
            let declared_groups = entry.get("access_groups").is_some();
            if everywhere && declared_groups {
                self.error(
                    key.span(),
                    format!(
                        "{context} has both `everywhere = true` and `access_groups`: choose one"
                    ),
                );
            } else if !everywhere && access_groups.is_empty() && !declared_groups {
                self.error(
                    key.span(),
                    format!(
                        "{context} grants nothing: give it `access_groups = [...]` or `everywhere = true`"
                    ),
                );
            }
            let owner = match entry.get("owner").map(|o| (o.get_ref(), o.span())) {
                Some((DeValue::String(text), span)) => {
                    if let Some(problem) = owner_problem(text) {
                        self.error(span, format!("`owner` in {context}: {problem}"));
                    }
                    text.to_string()
                }
                Some((other, span)) => {
                    self.error(
                        span,
                        format!(
                            "`owner` in {context} must be a string; found {}",
                            a(other.type_str())
                        ),
                    );
                    String::new()
                }
                None => {
                    self.error(
                        key.span(),
                        format!(
                            "{context} has no `owner`: name the person or team answerable for it"
                        ),
                    );
                    String::new()
                }
            };
            let ad_account = match entry.get("ad_account").map(|o| (o.get_ref(), o.span())) {
                Some((DeValue::String(text), span)) => {
                    if let Some(problem) = principal_name_problem(text) {
                        self.error(
                            span,
                            format!("`ad_account` {:?} in {context}: {problem}", text.as_ref()),
                        );
                    }
                    Some(text.to_string())
                }
                Some((other, span)) => {
                    self.error(
                        span,
                        format!(
                            "`ad_account` in {context} must be a string; found {}",
                            a(other.type_str())
                        ),
                    );
                    None
                }
                None => None,
            };
            automations.push(DraftAutomation {
                name: Named {
                    name: name.to_owned(),
                    span: key.span(),
                    until: None,
                },
                key_files,
                access_groups,
                everywhere,
                owner,
                ad_account,
            });
        }
        automations
    }

    /// An automation account's `key_files`: relative paths that stay inside the policy's
    /// directory.
    fn key_files(&mut self, value: &Spanned<DeValue<'_>>, context: &str) -> Vec<Named> {
        let Some(items) = self.string_list(value, "key_files", context) else {
            return Vec::new();
        };
        if items.is_empty() {
            self.error(
                value.span(),
                format!("`key_files` in {context} is empty: the account would have no key"),
            );
        }
        let mut files = Vec::new();
        for item in items {
            match key_file_problem(&item.name) {
                Some(problem) => self.error(
                    item.span.clone(),
                    format!("key file {:?} in {context}: {problem}", item.name),
                ),
                None => files.push(item),
            }
        }
        files
    }

    /// Every time-limited entry, with its position.
    fn grants(&self, draft: &Draft) -> Vec<Grant> {
        let mut grants = Vec::new();
        let mut add = |principals: &DraftPrincipals, context: &str| {
            for (names, kind) in [
                (&principals.users, PrincipalKind::User),
                (&principals.groups, PrincipalKind::Group),
            ] {
                for named in names {
                    if let Some(until) = &named.until {
                        let (line, column) =
                            diagnostic::line_column(self.source.text, named.span.start);
                        grants.push(Grant {
                            what: format!("{} `{}` in {context}", kind.noun(), named.name),
                            until: until.clone(),
                            line,
                            column,
                        });
                    }
                }
            }
        };
        add(&draft.everywhere, "[everywhere]");
        for group in &draft.access_groups {
            add(
                &group.principals,
                &format!("[access_groups.{}]", display_key(&group.name)),
            );
        }
        grants
    }

    fn key_file_entries(&self, draft: &Draft) -> Vec<KeyFileEntry> {
        draft
            .automation
            .iter()
            .flat_map(|automation| {
                automation.key_files.iter().map(|file| {
                    let (line, column) = diagnostic::line_column(self.source.text, file.span.start);
                    KeyFileEntry {
                        automation: automation.name.name.clone(),
                        path: file.name.clone(),
                        line,
                        column,
                    }
                })
            })
            .collect()
    }

    /// The string items of an array value; wrong types are reported and skipped.
    fn string_list(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        key: &str,
        context: &str,
    ) -> Option<Vec<Named>> {
        let array = match value.get_ref() {
            DeValue::Array(array) => array,
            DeValue::String(single) => {
                self.error(
                    value.span(),
                    format!(
                        "`{key}` in {context} must be a list of strings; found a string \
                         (write `{key} = [{single:?}]`)"
                    ),
                );
                return None;
            }
            other => {
                self.error(
                    value.span(),
                    format!(
                        "`{key}` in {context} must be a list of strings, like `{key} = [\"...\"]`; \
                         found {}",
                        a(other.type_str())
                    ),
                );
                return None;
            }
        };
        let mut items = Vec::new();
        for item in array.iter() {
            match item.get_ref() {
                DeValue::String(text) => items.push(Named {
                    name: text.to_string(),
                    span: item.span(),
                    until: None,
                }),
                other => self.error(
                    item.span(),
                    format!(
                        "`{key}` in {context} must hold only strings; found {}",
                        a(other.type_str())
                    ),
                ),
            }
        }
        Some(items)
    }

    fn fingerprints(&mut self, value: &Spanned<DeValue<'_>>) -> Vec<Named> {
        let Some(items) = self.string_list(value, "fingerprints", "[deny]") else {
            return Vec::new();
        };
        let mut seen: HashMap<String, Range<usize>> = HashMap::new();
        let mut fingerprints = Vec::new();
        for item in items {
            if let Some(problem) = fingerprint_problem(&item.name) {
                self.error(
                    item.span.clone(),
                    format!("fingerprint {:?} in [deny]: {problem}", item.name),
                );
                continue;
            }
            // Base64 is case-sensitive: only identical strings are the same key.
            if let Some(first) = seen.get(&item.name) {
                let (line, column) = diagnostic::line_column(self.source.text, first.start);
                self.error(
                    item.span.clone(),
                    format!(
                        "duplicate fingerprint `{}` in [deny] (already at {line}:{column})",
                        item.name
                    ),
                );
                continue;
            }
            seen.insert(item.name.clone(), item.span.clone());
            fingerprints.push(item);
        }
        fingerprints
    }

    /// Problems that need more than one table: redundant entries and entries `[deny]` overrides.
    fn cross_check(&mut self, draft: &Draft) {
        for automation in &draft.automation {
            for group in &automation.access_groups {
                if !draft.access_groups.iter().any(|g| g.name == group.name) {
                    let known: Vec<&str> = draft
                        .access_groups
                        .iter()
                        .map(|g| g.name.as_str())
                        .collect();
                    let hint = did_you_mean(&group.name, &known)
                        .map(|k| format!("; did you mean `{k}`?"))
                        .unwrap_or_default();
                    self.error(
                        group.span.clone(),
                        format!(
                            "[automation.{}] names access group `{}`, which the policy does not define{hint}",
                            automation.name.name, group.name
                        ),
                    );
                }
            }
        }

        let everywhere_users = by_key(&draft.everywhere.users);
        let everywhere_groups = by_key(&draft.everywhere.groups);
        let denied = by_key(&draft.deny_users);

        for group in &draft.access_groups {
            let context = format!("access group `{}`", group.name);
            for (listed, everywhere, kind) in [
                (
                    &group.principals.users,
                    &everywhere_users,
                    PrincipalKind::User,
                ),
                (
                    &group.principals.groups,
                    &everywhere_groups,
                    PrincipalKind::Group,
                ),
            ] {
                for principal in listed {
                    if let Some(first) = everywhere.get(&principal.key()) {
                        let line = self.line_of(first);
                        self.warning(
                            principal.span.clone(),
                            format!(
                                "{} `{}` is already in [everywhere] (line {line}); listing it in \
                                 {context} is redundant",
                                kind.noun(),
                                principal.name
                            ),
                        );
                    }
                }
            }
        }

        let elsewhere = draft
            .everywhere
            .users
            .iter()
            .map(|user| (user, "[everywhere]".to_owned()));
        let in_groups = draft.access_groups.iter().flat_map(|group| {
            group
                .principals
                .users
                .iter()
                .map(|user| (user, format!("access group `{}`", group.name)))
        });
        let mut overridden = Vec::new();
        for (user, context) in elsewhere.chain(in_groups) {
            if let Some(deny) = denied.get(&user.key()) {
                overridden.push((user.clone(), context, self.line_of(deny)));
            }
        }
        for (user, context, deny_line) in overridden {
            self.warning(
                user.span.clone(),
                format!(
                    "user `{}` in {context} is also in [deny] (line {deny_line}); deny wins, they \
                     get no access anywhere",
                    user.name
                ),
            );
        }
    }

    fn line_of(&self, named: &Named) -> usize {
        diagnostic::line_column(self.source.text, named.span.start).0
    }
}

fn by_key(names: &[Named]) -> HashMap<String, &Named> {
    names.iter().map(|named| (named.key(), named)).collect()
}

/// How many entries a `users`/`groups` key declares, valid or not. A value of the wrong type
/// counts as one: it is already reported, and calling the group "empty" as well would mislead.
fn declared_entries(table: &DeTable<'_>, key: &str) -> usize {
    match table.get(key).map(|value| value.get_ref()) {
        None => 0,
        Some(DeValue::Array(items)) => items.len(),
        Some(_) => 1,
    }
}

/// Why `name` can never match an AD sAMAccountName, or `None` when it can.
fn principal_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("the name is empty".to_owned());
    }
    if name.trim() != name {
        return Some(format!(
            "remove the leading or trailing whitespace (`{}`)",
            name.trim()
        ));
    }
    if let Some(domain_user) = name.split_once('\\').map(|(_, user)| user) {
        return Some(format!(
            "write the sAMAccountName without the domain: `{domain_user}`"
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| FORBIDDEN_IN_SAM_ACCOUNT_NAME.contains(*c))
    {
        return Some(format!(
            "`{bad}` is not allowed in an AD sAMAccountName (none of {FORBIDDEN_IN_SAM_ACCOUNT_NAME} are)"
        ));
    }
    if name.chars().any(char::is_control) {
        return Some("control characters are not allowed in an AD sAMAccountName".to_owned());
    }
    None
}

/// Why an automation `owner` would garble the group file line it is shown in, or `None`.
fn owner_problem(owner: &str) -> Option<String> {
    let allowed = |c: char| c.is_alphanumeric() || " ._@-".contains(c);
    if owner.trim().is_empty() {
        return Some("the owner is empty".into());
    }
    if owner.trim() != owner {
        return Some("remove the leading or trailing whitespace".into());
    }
    if let Some(bad) = owner.chars().find(|c| !allowed(*c)) {
        return Some(format!(
            "{bad:?} is not allowed (letters, digits, spaces and `._@-`: a person, a team or an e-mail address)"
        ));
    }
    if owner.contains(" via ") {
        return Some("`via` cannot be a word of the owner".into());
    }
    None
}

/// Why an automation key file path is not a relative path inside the policy's directory.
fn key_file_problem(path: &str) -> Option<String> {
    use std::path::Component;
    if path.is_empty() {
        return Some("the path is empty".into());
    }
    let parsed = Path::new(path);
    for component in parsed.components() {
        match component {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => {
                return Some(
                    "`..` is not allowed: key files live next to the policy, in its repository"
                        .into(),
                );
            }
            Component::RootDir | Component::Prefix(_) => {
                return Some(
                    "write the path relative to the policy file, in the policy repository".into(),
                );
            }
        }
    }
    None
}

/// Why `fingerprint` is not an OpenSSH SHA-256 key fingerprint, or `None` when it is one.
pub(super) fn fingerprint_problem(fingerprint: &str) -> Option<String> {
    let expected = "expected `SHA256:` and 43 characters of unpadded base64, as `ssh-keygen -lf` \
                    prints it";
    let Some(digest) = fingerprint.strip_prefix(FINGERPRINT_PREFIX) else {
        let lowered = fingerprint.to_ascii_lowercase();
        return Some(if lowered.starts_with("sha256:") {
            "write the prefix as `SHA256:` (upper case)".to_owned()
        } else if lowered.starts_with("md5:") || is_colon_hex(fingerprint) {
            format!("MD5 fingerprints are not accepted; {expected}")
        } else {
            expected.to_owned()
        });
    };
    if digest.ends_with('=') {
        return Some(format!("remove the `=` padding; {expected}"));
    }
    if digest.chars().count() != 43 {
        return Some(format!(
            "{} characters after `SHA256:`; {expected}",
            digest.chars().count()
        ));
    }
    let base64_alphabet = |c: char| c.is_ascii_alphanumeric() || c == '+' || c == '/';
    if let Some(bad) = digest.chars().find(|c| !base64_alphabet(*c)) {
        return Some(format!("`{bad}` is not a base64 character; {expected}"));
    }
    match base64::engine::general_purpose::STANDARD_NO_PAD.decode(digest) {
        Ok(bytes) if bytes.len() == 32 => None,
        // 43 characters of the right alphabet always decode to 32 bytes; what remains is a last
        // character whose unused bits are set, which no SHA-256 digest encodes to.
        _ => Some(format!(
            "not a canonical base64 encoding of 32 bytes; {expected}"
        )),
    }
}

/// `aa:bb:cc:…`, the legacy MD5 fingerprint format.
fn is_colon_hex(text: &str) -> bool {
    text.split(':').count() == 16
        && text
            .split(':')
            .all(|pair| pair.len() == 2 && pair.chars().all(|c| c.is_ascii_hexdigit()))
}

/// A key as it would be written in a TOML header: quoted when it is not a bare key.
fn display_key(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

fn list(keys: &[&str]) -> String {
    keys.iter()
        .map(|key| format!("`{key}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// "a string", "an array", "an integer".
fn a(type_name: &str) -> String {
    if type_name.starts_with(['a', 'e', 'i', 'o', 'u']) {
        format!("an {type_name}")
    } else {
        format!("a {type_name}")
    }
}
