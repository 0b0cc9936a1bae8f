//! Markdown for pull-request comments (`plan`, `diff`, `verify --format markdown`), with every
//! piece of text a user controls made inert.
//!
//! Such text reaches a comment from many hands: AD names and group names, policy descriptions,
//! git branch names, key comments quoted in problem texts, object names in a bucket. Rendered as
//! Markdown, `[x](https://…)` is a link, `![x](…)` loads an image from someone's server, `@team`
//! notifies a team, `<img …>` is HTML, `|` splits a table cell and a backtick ends a code span.
//! This module owns the two ways such text is written, and callers must use one of them for
//! anything not written by keyhole itself:
//! - [`code`]: a name, key or path, as a code span (rendered literally: no links, no mentions,
//!   no HTML), whatever backticks it holds;
//! - [`prose`]: a sentence (a problem, a reason, a warning), every ASCII punctuation character
//!   backslash-escaped, and what GitHub would still turn into a link or a mention after that
//!   (`@name`, `https://`, `www.`) broken with an invisible U+200B.
//!
//! Both are safe inside a table cell and on one line: newlines and other control characters
//! become spaces.

/// The zero-width space that keeps `@team` from being a mention and `https://` from being a link.
const BREAK: char = '\u{200B}';

/// `text` as a code span for a table cell or a line of prose.
pub fn code(text: &str) -> String {
    let text: String = one_line(text).replace('|', "\\|");
    if text.is_empty() {
        return String::new();
    }
    // A code span is closed by a run of backticks as long as the one that opened it, so open it
    // with a longer run than any inside; pad with spaces when the text touches a backtick.
    let longest_run = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest_run + 1);
    let pad = if text.starts_with('`') || text.ends_with('`') {
        " "
    } else {
        ""
    };
    format!("{fence}{pad}{text}{pad}{fence}")
}

/// `text` as literal prose: no emphasis, links, images, HTML, mentions or table breaks.
pub fn prose(text: &str) -> String {
    let text = one_line(text);
    let mut out = String::with_capacity(text.len() + text.len() / 4);
    let mut rest = text.as_str();
    while let Some(c) = rest.chars().next() {
        let after = &rest[c.len_utf8()..];
        match c {
            // Escaping does not stop GitHub's mentions or autolinks: they are found in the
            // rendered text. An invisible break does.
            '@' => {
                out.push('@');
                out.push(BREAK);
            }
            ':' if after.starts_with("//") => {
                out.push_str("\\:");
                out.push(BREAK);
            }
            'w' | 'W' if rest.len() >= 4 && rest[..4].eq_ignore_ascii_case("www.") => {
                out.push_str(&rest[..3]);
                out.push(BREAK);
                out.push_str("\\.");
                rest = &rest[4..];
                continue;
            }
            c if c.is_ascii_punctuation() => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
        rest = after;
    }
    out
}

/// Text on one line: every control character (newlines included) becomes a space.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// A fence for a fenced code block holding `lines`: longer than any run of backticks in them,
/// so no line can close the block early.
pub fn fence_for<'a>(lines: impl IntoIterator<Item = &'a str>) -> String {
    let longest_run = lines
        .into_iter()
        .flat_map(|line| line.split(|c| c != '`').map(str::len))
        .max()
        .unwrap_or(0);
    "`".repeat((longest_run + 1).max(3))
}

/// For tests of reports: the text of `markdown` that Markdown would still interpret, one line per
/// line: fenced code blocks, code spans and backslash-escaped characters removed (all of them
/// are rendered literally).
#[cfg(test)]
pub fn live_text(markdown: &str) -> String {
    let mut out = String::new();
    let mut fence: Option<String> = None;
    for line in markdown.lines() {
        let body = line.trim_start_matches(['>', ' ']);
        let run: String = body.chars().take_while(|&c| c == '`').collect();
        if let Some(open) = &fence {
            if run.len() >= open.len() && body.trim_end() == run {
                fence = None;
            }
            continue;
        }
        if run.len() >= 3 {
            fence = Some(run);
            continue;
        }
        let chars: Vec<char> = line.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            match chars[i] {
                '\\' => i += 2,
                '`' => {
                    let n = chars[i..].iter().take_while(|&&c| c == '`').count();
                    // The closing run: exactly n backticks.
                    let mut j = i + n;
                    let mut close = None;
                    while j < chars.len() {
                        if chars[j] == '`' {
                            let m = chars[j..].iter().take_while(|&&c| c == '`').count();
                            if m == n {
                                close = Some(j + m);
                                break;
                            }
                            j += m;
                        } else {
                            j += 1;
                        }
                    }
                    match close {
                        Some(end) => i = end,
                        None => {
                            out.extend(&chars[i..i + n]);
                            i += n;
                        }
                    }
                }
                c => {
                    out.push(c);
                    i += 1;
                }
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an attacker would put in a name, a key comment or a problem text.
    const HOSTILE: &[&str] = &[
        "[click me](https://evil.example/phish)",
        "![tracker](https://evil.example/pixel.png)",
        "cc @corp/security-team and @alice",
        "<img src=x onerror=alert(1)> <a href='//evil'>x</a>",
        "a | b | c",
        "`code` and ``more``",
        "www.evil.example and http://evil.example",
        "**bold** _em_ # heading\n- list\r\n> quote",
    ];

    /// `rendered` without its backslash-escaped characters: what Markdown may still interpret.
    fn unescaped(rendered: &str) -> String {
        let mut out = String::new();
        let mut chars = rendered.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                chars.next();
            } else {
                out.push(c);
            }
        }
        out
    }

    /// Markdown constructs that must not survive in the output.
    fn assert_inert(rendered: &str, input: &str) {
        let live_text = unescaped(rendered);
        for live in [
            "](", "![", "<img", "<a ", "http://", "https://", "www.", "**", "_", "#", "\n", "\r",
        ] {
            assert!(
                !live_text.contains(live),
                "{input:?} -> {rendered:?} holds {live:?}"
            );
        }
        // Every pipe is escaped, so no cell is split.
        assert!(
            !rendered.replace("\\|", "").contains('|'),
            "{input:?} -> {rendered:?}"
        );
        // No mention: every @ is followed by the invisible break.
        assert!(
            rendered
                .match_indices('@')
                .all(|(at, _)| rendered[at + 1..].starts_with(BREAK)),
            "{input:?} -> {rendered:?}"
        );
    }

    #[test]
    fn prose_leaves_nothing_live() {
        for input in HOSTILE {
            assert_inert(&prose(input), input);
        }
        // Plain words read the same.
        assert_eq!(prose("bob has no keys"), "bob has no keys");
        assert_eq!(prose("line 3: bad"), "line 3\\: bad");
    }

    #[test]
    fn code_spans_cannot_be_closed_from_inside() {
        assert_eq!(code("alice"), "`alice`");
        assert_eq!(code("a`b"), "``a`b``");
        assert_eq!(code("`x``"), "``` `x`` ```");
        assert_eq!(code("x|y"), "`x\\|y`");
        assert_eq!(code("two\nlines"), "`two lines`");
        assert_eq!(code(""), "");
        assert_eq!(fence_for(["plain", "has ``` inside", "````"]), "`````");
        assert_eq!(fence_for(["plain"]), "```");
    }
}
