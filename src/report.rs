//! Plan reports for people: plain text for terminals and logs, Markdown for pull-request
//! comments. (JSON is the `Plan` itself, serialized; its shape is documented in the README.)
//! Losses come before gains, and unchanged groups are summarised on one line so a report over a
//! thousand access groups stays readable.

use std::fmt::Write as _;

use crate::plan::{Action, GroupPlan, Plan};

fn action_word(action: Action) -> &'static str {
    match action {
        Action::Create => "create",
        Action::Update => "update",
        Action::Delete => "delete",
        Action::Unchanged => "unchanged",
    }
}

/// One line: how many groups of each action.
pub fn summary(plan: &Plan) -> String {
    let count = |action| plan.groups.values().filter(|g| g.action == action).count();
    format!(
        "{} to create, {} to update, {} to delete, {} unchanged; {} problems{}",
        count(Action::Create),
        count(Action::Update),
        count(Action::Delete),
        count(Action::Unchanged),
        plan.problems.len(),
        if plan.guard.refused {
            "; REFUSED by the safety guard"
        } else {
            ""
        }
    )
}

fn changed(plan: &Plan) -> impl Iterator<Item = (&String, &GroupPlan)> {
    plan.groups
        .iter()
        .filter(|(_, g)| g.action != Action::Unchanged)
}

pub fn text(plan: &Plan) -> String {
    let mut out = String::new();
    for (name, group) in changed(plan) {
        let _ = writeln!(out, "{name}: {}", action_word(group.action));
        for user in &group.removed_users {
            let _ = writeln!(out, "  - {} ({})", user.name, user.reason);
        }
        for user in &group.added_users {
            let _ = writeln!(out, "  + {} ({})", user.name, user.reason);
        }
        for fingerprint in &group.removed_fingerprints {
            let _ = writeln!(out, "  - key {fingerprint}");
        }
        for fingerprint in &group.added_fingerprints {
            let _ = writeln!(out, "  + key {fingerprint}");
        }
    }
    let unchanged: Vec<&str> = plan
        .groups
        .iter()
        .filter(|(_, g)| g.action == Action::Unchanged)
        .map(|(name, _)| name.as_str())
        .collect();
    if !unchanged.is_empty() {
        let _ = writeln!(out, "unchanged: {}", unchanged.join(", "));
    }
    if !plan.problems.is_empty() {
        let _ = writeln!(out, "problems:");
        for problem in &plan.problems {
            let _ = writeln!(out, "  {}: {}", problem.user, problem.reason);
        }
    }
    if plan.guard.refused {
        let _ = writeln!(out, "safety guard: REFUSED (publish --force overrides)");
        for reason in &plan.guard.reasons {
            let _ = writeln!(out, "  {reason}");
        }
    }
    let _ = writeln!(out, "{}", summary(plan));
    out
}

pub fn markdown(plan: &Plan) -> String {
    let mut out = format!("**keyhole plan:** {}\n", summary(plan));
    if plan.guard.refused {
        out.push_str("\n> [!WARNING]\n> The safety guard would refuse this publish:\n");
        for reason in &plan.guard.reasons {
            let _ = writeln!(out, "> - {reason}");
        }
    }
    for (name, group) in changed(plan) {
        let _ = writeln!(out, "\n### `{name}`: {}\n", action_word(group.action));
        out.push_str("| change | who / key | why |\n|---|---|---|\n");
        for user in &group.removed_users {
            let _ = writeln!(
                out,
                "| ➖ removed | {} | {} |",
                escape(&user.name),
                escape(&user.reason)
            );
        }
        for user in &group.added_users {
            let _ = writeln!(
                out,
                "| ➕ added | {} | {} |",
                escape(&user.name),
                escape(&user.reason)
            );
        }
        for fingerprint in &group.removed_fingerprints {
            let _ = writeln!(out, "| ➖ key | `{fingerprint}` | |");
        }
        for fingerprint in &group.added_fingerprints {
            let _ = writeln!(out, "| ➕ key | `{fingerprint}` | |");
        }
    }
    if !plan.problems.is_empty() {
        out.push_str("\n<details><summary>Problems</summary>\n\n");
        for problem in &plan.problems {
            let _ = writeln!(
                out,
                "- **{}**: {}",
                escape(&problem.user),
                escape(&problem.reason)
            );
        }
        out.push_str("\n</details>\n");
    }
    out
}

/// Keeps names from breaking a Markdown table.
fn escape(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}
