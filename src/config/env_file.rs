//! Stage one: raw `KEY=VALUE` pairs from `--env-file` and the real environment.
//!
//! Owns: the env-file syntax ([`parse_env_file`]: systemd's EnvironmentFile rules, `#` and `;` comments, a
//! trailing `\` continuing a line, quotes; plus `export `; every bad line at once),
//! laying the environment over the file ([`gather`]: the environment wins), reading the process environment
//! ([`process_env`]) and [`load_variables`] (all of it for the program, with a warning when the file is
//! readable by every user). Does not own: what the values mean (read.rs, mod.rs).

use std::collections::BTreeMap;
use std::path::Path;

use super::read::shorten;

/// Parses an env file as systemd's EnvironmentFile does: `KEY=VALUE` lines, blank lines, comment lines
/// starting with `#` or `;`, a line ending in `\` continued on the next, values optionally in single or
/// double quotes; and an optional `export ` prefix (shell files). Returns every bad line at once (`line N:
/// ...`, N the line where the entry starts).
pub fn parse_env_file(text: &str) -> Result<BTreeMap<String, String>, Vec<String>> {
    let mut map = BTreeMap::new();
    let mut errors = Vec::new();
    for (n, joined) in logical_lines(text) {
        let line = joined.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let line = line.strip_prefix("export ").map(str::trim_start).unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            errors.push(format!("line {n}: expected KEY=VALUE"));
            continue;
        };
        let key = key.trim();
        if !is_valid_key(key) {
            errors.push(format!(
                "line {n}: {:?} is not a variable name (letters, digits, _)",
                shorten(key)
            ));
            continue;
        }
        match unquote(value.trim()) {
            Some(v) => {
                map.insert(key.to_string(), v);
            }
            None => errors.push(format!("line {n}: {key}: unterminated quote")),
        }
    }
    if errors.is_empty() {
        Ok(map)
    } else {
        Err(errors)
    }
}

/// The file's lines with each `\`-continued line joined to the next (the backslash and the line break
/// dropped), numbered from 1 by the line they start on. Comment lines are never continued, as in systemd.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out: Vec<(usize, String)> = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let (n, mut line) = match pending.take() {
            Some((n, mut acc)) => {
                acc.push_str(raw);
                (n, acc)
            }
            None => {
                let t = raw.trim_start();
                if t.starts_with('#') || t.starts_with(';') {
                    out.push((i + 1, raw.to_string()));
                    continue;
                }
                (i + 1, raw.to_string())
            }
        };
        let trailing = line.len() - line.trim_end_matches('\\').len();
        if trailing % 2 == 1 {
            line.pop();
            pending = Some((n, line));
        } else {
            out.push((n, line));
        }
    }
    out.extend(pending);
    out
}

fn is_valid_key(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn unquote(v: &str) -> Option<String> {
    for q in ['"', '\''] {
        if let Some(rest) = v.strip_prefix(q) {
            let inner = rest.strip_suffix(q)?;
            if q == '"' {
                // Double quotes allow \" and \\ escapes, as in shells and systemd.
                let mut out = String::with_capacity(inner.len());
                let mut chars = inner.chars();
                while let Some(c) = chars.next() {
                    if c == '\\' {
                        match chars.next() {
                            Some(n) => out.push(n),
                            None => out.push('\\'),
                        }
                    } else {
                        out.push(c);
                    }
                }
                return Some(out);
            }
            return Some(inner.to_string());
        }
    }
    Some(v.to_string())
}

/// Lays `env` (the real environment) over `file` (from `--env-file`): a variable set in the environment wins.
pub fn gather(
    file: BTreeMap<String, String>,
    env: impl IntoIterator<Item = (String, String)>,
) -> BTreeMap<String, String> {
    let mut map = file;
    map.extend(env);
    map
}

/// Stage one for the program: the env file (if any) with the real environment laid over it, and warnings
/// about the file itself (readable by every user). The error names the file and every bad line.
pub fn load_variables(env_file: Option<&Path>) -> Result<(BTreeMap<String, String>, Vec<String>), String> {
    use std::os::unix::fs::PermissionsExt;
    let mut warnings = Vec::new();
    let file_map = match env_file {
        None => BTreeMap::new(),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("--env-file {}: cannot read: {e}", path.display()))?;
            if let Ok(meta) = std::fs::metadata(path) {
                if meta.permissions().mode() & 0o004 != 0 {
                    warnings.push(format!(
                        "{} is readable by every user of this machine and may hold passwords: chmod o-r it",
                        path.display()
                    ));
                }
            }
            parse_env_file(&text).map_err(|errs| {
                format!(
                    "--env-file {}: {} bad line(s):\n  {}",
                    path.display(),
                    errs.len(),
                    errs.join("\n  ")
                )
            })?
        }
    };
    Ok((gather(file_map, process_env()), warnings))
}

/// The process environment as a map, for [`gather`]. Variables that are not valid UTF-8 are kept with a
/// lossy value so that validation names them rather than silently ignoring them.
pub fn process_env() -> Vec<(String, String)> {
    std::env::vars_os()
        .map(|(k, v)| (k.to_string_lossy().into_owned(), v.to_string_lossy().into_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::QuickCheck;

    #[test]
    fn env_file_syntax() {
        let text = "# comment\n\nA=1\nexport B = two words \nC=\"quoted # not a comment\"\nD='single'\nE=\"a\\\"b\"\n";
        let m = parse_env_file(text).expect("valid file");
        assert_eq!(m["A"], "1");
        assert_eq!(m["B"], "two words");
        assert_eq!(m["C"], "quoted # not a comment");
        assert_eq!(m["D"], "single");
        assert_eq!(m["E"], "a\"b");
        // systemd's EnvironmentFile rules: `;` comments, a trailing backslash continues the line.
        let m = parse_env_file("; systemd comment\n  ;indented\nLONG=a\\\nb\nAFTER=1\n#c \\\nNOT_CONTINUED=2\n")
            .expect("valid file");
        assert_eq!(m["LONG"], "ab");
        assert_eq!(m["AFTER"], "1");
        assert_eq!(m["NOT_CONTINUED"], "2");
        assert_eq!(m.len(), 3);
        let m = parse_env_file("P=ends with two\\\\\nQ=2").expect("an escaped backslash ends the line");
        assert_eq!(m["Q"], "2");
        let errs = parse_env_file("GOOD=1\nno equals\n1BAD=2\nQ=\"open\n").expect_err("bad lines");
        assert_eq!(errs.len(), 3);
        assert!(errs[0].starts_with("line 2:"));
        assert!(errs[1].starts_with("line 3:"));
        assert!(errs[2].starts_with("line 4:"));
    }

    #[test]
    fn environment_wins_over_file() {
        let file = parse_env_file("BATCH_SIZE=10\nLOG_LEVEL=debug").expect("valid");
        let m = gather(file, vec![("BATCH_SIZE".to_string(), "20".to_string())]);
        assert_eq!(m["BATCH_SIZE"], "20");
        assert_eq!(m["LOG_LEVEL"], "debug");
    }

    fn prop_env_file_parser_never_panics(bytes: Vec<u8>) -> bool {
        let text = String::from_utf8_lossy(&bytes);
        match parse_env_file(&text) {
            Ok(map) => map.keys().all(|k| is_valid_key(k)),
            Err(errs) => !errs.is_empty(),
        }
    }

    #[test]
    fn env_file_parser_property() {
        QuickCheck::new()
            .tests(500)
            .quickcheck(prop_env_file_parser_never_panics as fn(Vec<u8>) -> bool);
    }
}
