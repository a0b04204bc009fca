//! Every relative link in the documentation resolves: README.md, CONTRIBUTING.md, BENCHMARKS.md and
//! every Markdown file under docs/. A link to a file must name one that exists; a link with an
//! `#anchor` (to the same page or another Markdown page) must name a heading of that page, with
//! GitHub's rules for turning a heading into an anchor. Links inside code are not links and are
//! skipped, and so are absolute URLs (http, https, mailto).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Markdown files the documentation consists of.
fn documents() -> Vec<PathBuf> {
    let root = root();
    let mut files: Vec<PathBuf> = ["README.md", "CONTRIBUTING.md", "BENCHMARKS.md"]
        .iter()
        .map(|f| root.join(f))
        .filter(|p| p.exists())
        .collect();
    let mut stack = vec![root.join("docs")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("docs/ exists") {
            let path = entry.expect("a readable entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The text outside fenced code blocks, line by line (fenced lines become empty, so line numbers
/// stay), without inline code.
fn prose(text: &str) -> Vec<String> {
    unfenced(text)
        .iter()
        .map(|l| without_inline_code(l))
        .collect()
}

/// The lines outside fenced code blocks (fenced lines become empty).
fn unfenced(text: &str) -> Vec<String> {
    let mut fence: Option<String> = None;
    text.lines()
        .map(|line| {
            let trimmed = line.trim_start();
            if let Some(f) = &fence {
                if trimmed.starts_with(f.as_str()) {
                    fence = None;
                }
                return String::new();
            }
            for marker in ["```", "~~~"] {
                if trimmed.starts_with(marker) {
                    fence = Some(marker.to_owned());
                    return String::new();
                }
            }
            line.to_owned()
        })
        .collect()
}

fn without_inline_code(line: &str) -> String {
    let mut out = String::new();
    let mut in_code = false;
    for c in line.chars() {
        if c == '`' {
            in_code = !in_code;
        } else if !in_code {
            out.push(c);
        }
    }
    out
}

/// The targets of `[text](target)` and `![alt](target)` links on one line.
fn link_targets(line: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find("](") {
        let after = &rest[i + 2..];
        // The target ends at the matching ')' (parentheses inside it are balanced).
        let mut depth = 0;
        let mut end = None;
        for (j, c) in after.char_indices() {
            match c {
                '(' => depth += 1,
                ')' if depth == 0 => {
                    end = Some(j);
                    break;
                }
                ')' => depth -= 1,
                _ => {}
            }
        }
        match end {
            Some(j) => {
                let target = after[..j].split_whitespace().next().unwrap_or("");
                targets.push(target.trim_matches(|c| c == '<' || c == '>').to_owned());
                rest = &after[j..];
            }
            None => break,
        }
    }
    targets
}

/// GitHub's anchor for a heading: lower case, punctuation dropped (but `-` and `_` kept), spaces
/// turned into `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c),
            _ => None,
        })
        .collect()
}

/// `[text](target)` becomes `text`.
fn link_text_only(heading: &str) -> String {
    let mut out = heading.to_owned();
    while let Some(i) = out.find("](") {
        let end = out[i..].find(')').map_or(out.len(), |j| i + j + 1);
        out.replace_range(i + 1..end, "");
    }
    out.replace(['[', ']'], "")
}

/// Every anchor a page offers: its headings' slugs (repeats get `-1`, `-2`, … as on GitHub).
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for line in unfenced(text) {
        let trimmed = line.trim_start();
        let level = trimmed.chars().take_while(|&c| c == '#').count();
        if !(1..=6).contains(&level) || !trimmed[level..].starts_with(' ') {
            continue;
        }
        // Link syntax in a heading counts only its text.
        let heading = link_text_only(&trimmed[level..]);
        let base = slug(&heading);
        let mut anchor = base.clone();
        let mut n = 0;
        while seen.contains(&anchor) {
            n += 1;
            anchor = format!("{base}-{n}");
        }
        seen.insert(anchor);
    }
    seen
}

/// Every broken link of one page, as `file:line: target (why)`.
fn broken_links(file: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(file).expect("a readable document");
    let dir = file.parent().expect("a file has a directory");
    let shown = file
        .strip_prefix(root())
        .unwrap_or(file)
        .display()
        .to_string();
    let mut broken = Vec::new();
    for (n, line) in prose(&text).iter().enumerate() {
        for target in link_targets(line) {
            if target.is_empty()
                || target.contains("://")
                || target.starts_with("mailto:")
                || target.starts_with("//")
            {
                continue;
            }
            let (path, anchor) = match target.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (target.as_str(), None),
            };
            let resolved = if path.is_empty() {
                file.to_path_buf()
            } else {
                dir.join(path)
            };
            if !resolved.exists() {
                broken.push(format!("{shown}:{}: {target} (no such file)", n + 1));
                continue;
            }
            if let Some(anchor) = anchor {
                if resolved.extension().is_none_or(|e| e != "md") {
                    broken.push(format!(
                        "{shown}:{}: {target} (an anchor into a file that is not Markdown)",
                        n + 1
                    ));
                    continue;
                }
                let page = std::fs::read_to_string(&resolved).expect("a readable page");
                if !anchors(&page).contains(anchor) {
                    broken.push(format!("{shown}:{}: {target} (no such heading)", n + 1));
                }
            }
        }
    }
    broken
}

#[test]
fn every_relative_link_in_the_documentation_resolves() {
    let docs = documents();
    assert!(
        docs.iter().any(|d| d.ends_with("README.md")) && docs.len() > 5,
        "the documentation is found: {docs:?}"
    );
    let broken: Vec<String> = docs.iter().flat_map(|d| broken_links(d)).collect();
    assert!(
        broken.is_empty(),
        "broken links in the documentation:\n{}",
        broken.join("\n")
    );
}

#[test]
fn anchors_follow_githubs_rules() {
    let page = "# Guarantees: how grants are kept alive\n## The assets infra/deploy.sh renders\n\
                ## Consent\n## Consent\n```\n# not a heading\n```\n## `BROKER_PORT` and [links](x.md)\n";
    let found = anchors(page);
    for expected in [
        "guarantees-how-grants-are-kept-alive",
        "the-assets-infradeploysh-renders",
        "consent",
        "consent-1",
        "broker_port-and-links",
    ] {
        assert!(found.contains(expected), "{expected} in {found:?}");
    }
    assert!(!found.contains("not-a-heading"));
}

#[test]
fn links_are_found_outside_code_only() {
    let lines = prose("see [a](a.md#x) and `[b](b.md)`\n```\n[c](c.md)\n```\n![img](p.png)");
    let targets: Vec<String> = lines.iter().flat_map(|l| link_targets(l)).collect();
    assert_eq!(targets, ["a.md#x", "p.png"]);
}
