//! Plan reports for people: plain text for terminals and logs, Markdown for pull-request
//! comments. (JSON is the `Plan` itself, serialized; its shape is documented in the README.)
//! Losses come before gains, and unchanged groups are summarised on one line so a report over a
//! thousand access groups stays readable. Reports are written as they are formatted, never built
//! whole: the first publish of a dense directory lists every membership (330,000 lines at 10,000
//! people).

use std::io::{self, Write};

use crate::markdown::{code, prose};
use crate::publisher::plan::{Action, GroupPlan, Plan};

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

pub fn text(plan: &Plan, out: &mut impl Write) -> io::Result<()> {
    for (name, group) in changed(plan) {
        writeln!(out, "{name}: {}", action_word(group.action))?;
        for user in &group.removed_users {
            writeln!(out, "  - {} ({})", user.name, user.reason)?;
        }
        for user in &group.added_users {
            writeln!(out, "  + {} ({})", user.name, user.reason)?;
        }
        for fingerprint in &group.removed_fingerprints {
            writeln!(out, "  - key {fingerprint}")?;
        }
        for fingerprint in &group.added_fingerprints {
            writeln!(out, "  + key {fingerprint}")?;
        }
    }
    let mut unchanged = plan
        .groups
        .iter()
        .filter(|(_, g)| g.action == Action::Unchanged)
        .map(|(name, _)| name.as_str());
    if let Some(first) = unchanged.next() {
        write!(out, "unchanged: {first}")?;
        for name in unchanged {
            write!(out, ", {name}")?;
        }
        writeln!(out)?;
    }
    if !plan.problems.is_empty() {
        writeln!(out, "problems:")?;
        for problem in &plan.problems {
            writeln!(out, "  {}: {}", problem.user, problem.reason)?;
        }
    }
    if plan.guard.refused {
        writeln!(out, "safety guard: REFUSED (publish --force overrides)")?;
        for reason in &plan.guard.reasons {
            writeln!(out, "  {reason}")?;
        }
    }
    writeln!(out, "{}", summary(plan))
}

/// The Markdown report. Every name, reason and problem text goes through [`crate::markdown`]:
/// they hold AD names and quoted key comments, and reach pull-request comments.
pub fn markdown(plan: &Plan, out: &mut impl Write) -> io::Result<()> {
    writeln!(out, "**keyhole plan:** {}", summary(plan))?;
    if plan.guard.refused {
        writeln!(
            out,
            "\n> [!WARNING]\n> The safety guard would refuse this publish:"
        )?;
        for reason in &plan.guard.reasons {
            writeln!(out, "> - {}", prose(reason))?;
        }
    }
    for (name, group) in changed(plan) {
        writeln!(out, "\n### {}: {}\n", code(name), action_word(group.action))?;
        writeln!(out, "| change | who / key | why |\n|---|---|---|")?;
        for user in &group.removed_users {
            let (who, why) = (code(&user.name), prose(&user.reason));
            writeln!(out, "| ➖ removed | {who} | {why} |")?;
        }
        for user in &group.added_users {
            let (who, why) = (code(&user.name), prose(&user.reason));
            writeln!(out, "| ➕ added | {who} | {why} |")?;
        }
        for fingerprint in &group.removed_fingerprints {
            writeln!(out, "| ➖ key | {} | |", code(fingerprint))?;
        }
        for fingerprint in &group.added_fingerprints {
            writeln!(out, "| ➕ key | {} | |", code(fingerprint))?;
        }
    }
    if !plan.problems.is_empty() {
        writeln!(out, "\n<details><summary>Problems</summary>\n")?;
        for problem in &plan.problems {
            let (who, what) = (code(&problem.user), prose(&problem.reason));
            writeln!(out, "- **{who}**: {what}")?;
        }
        writeln!(out, "\n</details>")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publisher::plan::{Guard, UserChange};
    use crate::publisher::render::Problem;

    /// A plan whose every user-controlled field carries Markdown an attacker would like rendered
    /// in a pull-request comment: a link, an image, a mention, HTML, a pipe, backticks.
    fn hostile_plan() -> Plan {
        let hostile = "[click](https://evil.example) ![x](https://evil.example/p.png) @corp/admins <img src=x> a|b `c`";
        let change = UserChange {
            name: format!("mallory{hostile}").as_str().into(),
            reason: format!("member of {hostile}").into(),
        };
        let group = GroupPlan {
            action: Action::Update,
            added_users: vec![change.clone()],
            removed_users: vec![change],
            added_fingerprints: vec![],
            removed_fingerprints: vec![],
            next: None,
            rendered: true,
            users_before: 1,
        };
        Plan {
            groups: [(format!("web`{hostile}"), group)].into(),
            problems: vec![Problem {
                user: format!("eve{hostile}"),
                reason: format!("authorized_keys line 1: invalid: unknown key type \"{hostile}\""),
            }],
            guard: Guard {
                refused: true,
                reasons: vec![format!("group {hostile} loses everyone")],
            },
            index: crate::bucket::index::Index::empty(),
            owners: None,
            revoked: None,
            resign: false,
            rewrite: false,
            canary_changed: false,
            people: 0,
            keys: 0,
        }
    }

    #[test]
    fn markdown_renders_nothing_a_user_wrote_as_markdown() {
        let mut report = Vec::new();
        markdown(&hostile_plan(), &mut report).unwrap();
        let report = String::from_utf8(report).unwrap();
        let live = crate::markdown::live_text(&report);
        for construct in ["](", "![", "<img", "https://", "@corp", "`"] {
            assert!(
                !live.contains(construct),
                "{construct:?} is live in:\n{report}"
            );
        }
        // A table row keeps its four cell borders: no pipe from the text splits it.
        for line in live
            .lines()
            .filter(|l| l.starts_with("| ➕") || l.starts_with("| ➖"))
        {
            assert_eq!(line.matches('|').count(), 4, "{line}");
        }
        assert!(report.contains("member of"), "{report}");
    }
}
