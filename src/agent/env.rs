//! Environments of child processes: the `EXECD_ENVS` file format, `~`/`$VAR` expansion of
//! paths, and program lookup on the child's `PATH`.
//!
//! Pure functions over strings and the filesystem; no async.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// An environment being assembled, later entries overriding earlier ones.
pub type EnvMap = BTreeMap<String, String>;

/// Why a path could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpandError {
    /// `$NAME` or `${NAME}` names a variable that is not set.
    #[error("undefined variable {0} in path")]
    Undefined(String),
    /// `${` without a closing brace.
    #[error("unterminated ${{ in path")]
    Unterminated,
    /// `~` but no HOME to expand it with.
    #[error("cannot expand ~: HOME is not set")]
    NoHome,
}

/// Expands a leading `~` (from `HOME`) and every `$NAME`/`${NAME}` using `lookup`. A `$` not
/// followed by a name is kept literally.
pub fn expand_path(input: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, ExpandError> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    if rest == "~" || rest.starts_with("~/") {
        out.push_str(&lookup("HOME").ok_or(ExpandError::NoHome)?);
        rest = &rest[1..];
    }
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, tail) = if let Some(braced) = after.strip_prefix('{') {
            let end = braced.find('}').ok_or(ExpandError::Unterminated)?;
            (&braced[..end], &braced[end + 1..])
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        if name.is_empty() {
            out.push('$');
            rest = after;
            continue;
        }
        out.push_str(&lookup(name).ok_or_else(|| ExpandError::Undefined(name.to_owned()))?);
        rest = tail;
    }
    out.push_str(rest);
    Ok(out)
}

/// Parses the `EXECD_ENVS` file format, applying entries over `base` (last entry wins):
/// `KEY=value` (trimmed, `$VAR` expanded from what is known so far), `KEY="…"` (escapes
/// `\n \r \t \\ \"`, expansion, may span lines), `KEY='…'` (literal, may span lines).
/// Blank lines, `#` comments and malformed lines are skipped.
pub fn parse_env_file(content: &str, base: &mut EnvMap) {
    let mut rest = content;
    while !rest.is_empty() {
        let (line, next) = split_line(rest);
        rest = next;
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let trimmed = trimmed.strip_prefix("export ").unwrap_or(trimmed);
        let Some((key, value)) = trimmed.split_once('=') else {
            continue;
        };
        let key = key.trim();
        if !valid_name(key) {
            continue;
        }
        let value = if let Some(body) = value.strip_prefix('\'') {
            // Literal until the next quote, possibly on a later line.
            let (text, remaining) = take_quoted(body, rest, '\'');
            rest = remaining;
            Some(text)
        } else if let Some(body) = value.strip_prefix('"') {
            let (raw, remaining) = take_quoted(body, rest, '"');
            rest = remaining;
            let unescaped = unescape_double(&raw);
            expand_lenient(&unescaped, base)
        } else {
            expand_lenient(value.trim(), base)
        };
        // A value that expands past MAX_EXPANDED is skipped like a malformed line.
        let Some(value) = value else {
            continue;
        };
        base.insert(key.to_owned(), value);
    }
}

fn split_line(s: &str) -> (&str, &str) {
    match s.find('\n') {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, ""),
    }
}

/// Takes text up to the closing `quote` (honouring `\"` inside double quotes), continuing into
/// `rest` if the value spans lines. Returns the text and what remains after the closing line.
fn take_quoted<'a>(first: &'a str, rest: &'a str, quote: char) -> (String, &'a str) {
    let mut text = String::new();
    let mut segment = first;
    let mut rest = rest;
    loop {
        let mut escaped = false;
        for (i, c) in segment.char_indices() {
            if quote == '"' && c == '\\' && !escaped {
                escaped = true;
                continue;
            }
            if c == quote && !escaped {
                text.push_str(&segment[..i]);
                return (text, rest);
            }
            escaped = false;
        }
        text.push_str(segment);
        if rest.is_empty() {
            return (text, rest); // unterminated: take what there is
        }
        text.push('\n');
        let (line, next) = split_line(rest);
        segment = line;
        rest = next;
    }
}

fn unescape_double(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('t') => out.push('\t'),
            Some('\\') => out.push('\\'),
            Some('"') => out.push('"'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// Most bytes `$VAR` expansion may add to one `EXECD_ENVS` value: what execve takes for one
/// string (`MAX_ARG_STRLEN`, 128 KiB). Without a bound, each `A=$A$A` line would double the
/// value, and a few dozen such lines would exhaust execd's memory on the next command.
const MAX_EXPANDED: usize = 128 << 10;

/// `$VAR` expansion where an undefined variable expands to nothing (shell behaviour); `None`
/// when the variables would add more than [`MAX_EXPANDED`] bytes.
fn expand_lenient(s: &str, env: &EnvMap) -> Option<String> {
    let budget = std::cell::Cell::new(MAX_EXPANDED);
    let over = std::cell::Cell::new(false);
    let expanded = expand_path(s, |k| {
        let value = env.get(k).map_or("", String::as_str);
        match budget.get().checked_sub(value.len()) {
            Some(left) => {
                budget.set(left);
                Some(value.to_owned())
            }
            None => {
                over.set(true);
                None
            }
        }
    });
    match expanded {
        Ok(value) => Some(value),
        Err(_) if over.get() => None,
        Err(_) => Some(s.to_owned()),
    }
}

/// Whether `name` is a valid environment variable name.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Resolves `program` as the 1.1.1 contract says: a name containing `/` is taken relative to
/// `cwd`; a bare name is searched in the absolute entries of the child's `PATH`.
pub fn resolve_program(program: &str, path_var: Option<&str>, cwd: &Path) -> Option<PathBuf> {
    if program.contains('/') {
        let p = cwd.join(program);
        return p.exists().then_some(p);
    }
    path_var?
        .split(':')
        .filter(|dir| dir.starts_with('/'))
        .map(|dir| Path::new(dir).join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: EnvMap = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    /// Issue 20 (found by `fuzz/` target `env_file`): each `A=$A$A` line doubled the value,
    /// so a small `EXECD_ENVS` file exhausted execd's memory. Expansion now stops at 128 KiB
    /// and the entry is skipped; the value before it stays.
    #[test]
    fn issue20_env_file_expansion_is_bounded() {
        let mut content = String::from("A=0123456789abcdef\n");
        for _ in 0..40 {
            content.push_str("A=$A$A\nB=\"$A$A\"\n");
        }
        let mut env = EnvMap::new();
        parse_env_file(&content, &mut env);
        assert_eq!(
            env["A"].len(),
            16 << 13,
            "doubled while it fits: 16 B × 2^13 = 128 KiB"
        );
        assert!(env["B"].len() <= MAX_EXPANDED);
        // The input the fuzzer found (a 148-byte file that grew a 312 KB value).
        let found = std::str::from_utf8(b"A=\x01TA[AA=x\nA=3\x00A+A#A$A=xx\nA=3\x04A$A#=$A$A\nA=#=$A$A=\x01$A$A=x\nA=3\x00A$A#=$A$A=$A$A=x\nA=3=$A$A=$A$A=x\nA=3\x04A$A#A$A#=$A$A\nA=#=$A$A=\x01$A$A=x\nA=3\x00A$A#=$A$A==$A$(").unwrap();
        let mut env = EnvMap::new();
        parse_env_file(found, &mut env);
        assert!(env.values().all(|v| v.len() <= MAX_EXPANDED + found.len()));
        // Ordinary expansion is unchanged.
        let mut env = EnvMap::new();
        parse_env_file("X=1\nY=$X-${X}\n", &mut env);
        assert_eq!(env["Y"], "1-1");
    }

    #[test]
    fn expands_home_and_variables() {
        let e = env(&[("HOME", "/root"), ("A", "x"), ("B_2", "y")]);
        assert_eq!(expand_path("~/d", &e).unwrap(), "/root/d");
        assert_eq!(expand_path("/$A/${B_2}/z", &e).unwrap(), "/x/y/z");
        assert_eq!(expand_path("/a$/b", &e).unwrap(), "/a$/b");
        assert_eq!(
            expand_path("/$NOPE", &e),
            Err(ExpandError::Undefined("NOPE".into()))
        );
        assert_eq!(expand_path("/${A", &e), Err(ExpandError::Unterminated));
        assert_eq!(expand_path("/a~b", &e).unwrap(), "/a~b");
    }

    #[test]
    fn env_file_forms() {
        let mut base: EnvMap = [("HOME".to_string(), "/h".to_string())].into();
        parse_env_file(
            "# comment\n\nPLAIN = $HOME/bin \nLIT='a $HOME \\n'\nDQ=\"t\\tq\\\" $HOME\"\nMULTI='l1\nl2'\nexport EX=1\nbad line\n1BAD=x\nPLAIN=again\n",
            &mut base,
        );
        assert_eq!(base["PLAIN"], "again");
        assert_eq!(base["LIT"], "a $HOME \\n");
        assert_eq!(base["DQ"], "t\tq\" /h");
        assert_eq!(base["MULTI"], "l1\nl2");
        assert_eq!(base["EX"], "1");
        assert!(!base.contains_key("1BAD"));
    }

    #[test]
    fn set_env_entries_round_trip() {
        // The SDK's set_env writes KEY='v' or KEY="escaped"; both must read back exactly.
        let mut base = EnvMap::new();
        parse_env_file("FOO='bar baz'\nQ=\"it's \\\"x\\\"\\n\"\n", &mut base);
        assert_eq!(base["FOO"], "bar baz");
        assert_eq!(base["Q"], "it's \"x\"\n");
    }

    proptest! {
        #[test]
        fn expansion_without_dollar_or_tilde_is_identity(s in "[^$~]*") {
            prop_assert_eq!(expand_path(&s, |_| None).unwrap(), s);
        }

        #[test]
        fn defined_variables_always_expand(name in "[A-Za-z_][A-Za-z0-9_]{0,8}", val in "[^$]{0,12}", pre in "[a-z/]{0,5}") {
            let e = env(&[(&name, &val)]);
            prop_assert_eq!(expand_path(&format!("{pre}${{{name}}}"), &e).unwrap(), format!("{pre}{val}"));
        }

        #[test]
        fn env_file_never_panics(s in "\\PC*") {
            let mut base = EnvMap::new();
            parse_env_file(&s, &mut base);
        }
    }
}
