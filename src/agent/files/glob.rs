//! Glob patterns matched against base names, with the doublestar semantics upstream uses for
//! `GET /files/search`: `*` and `?` (never matching `/`), `[abc]`, `[a-z]`, `[!x]`/`[^x]`,
//! `{a,b}` alternatives (nestable), `\` escapes, and `**`. A base name has no `/`, so `**/` can
//! only match nothing and `**` alone is `*`.
//!
//! Written here rather than taken from a glob crate to keep a regex engine out of the agent.
//! Matching is the iterative wildcard algorithm: linear in practice, O(pattern × name) at worst.
//! Pure functions.

/// Why a pattern cannot be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GlobError {
    /// `[` without a closing `]`.
    #[error("unclosed character class")]
    UnclosedClass,
    /// `{` without a closing `}`, or a stray `}`.
    #[error("unbalanced braces")]
    UnbalancedBraces,
    /// `{…}` alternatives multiply beyond what is reasonable.
    #[error("too many alternatives")]
    TooManyAlternatives,
    /// A pattern ending in a lone `\`.
    #[error("dangling escape")]
    DanglingEscape,
    /// More than [`MAX_PATTERN`] characters.
    #[error("pattern longer than {MAX_PATTERN} characters")]
    TooLong,
}

/// Longest pattern accepted, in characters. Base names have at most 255 bytes; the bound
/// keeps brace expansion (which copies the pattern once per alternative and per nesting
/// level) small: a 60 KB pattern of `{}` or `{a,b}` groups took over 2 GB.
pub const MAX_PATTERN: usize = 1024;

/// Alternatives a pattern may expand to through braces.
const MAX_ALTERNATIVES: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(char),
    /// `?`: any one character.
    One,
    /// `*`: any run of characters.
    Star,
    /// `[…]`: ranges (single characters are `(c, c)`), possibly negated.
    Class {
        ranges: Vec<(char, char)>,
        negated: bool,
    },
}

/// A compiled pattern: one token list per brace alternative.
#[derive(Debug, Clone)]
pub struct Glob {
    alternatives: Vec<Vec<Token>>,
}

impl Glob {
    /// Compiles `pattern`.
    pub fn new(pattern: &str) -> Result<Self, GlobError> {
        let chars: Vec<char> = pattern.chars().collect();
        if chars.len() > MAX_PATTERN {
            return Err(GlobError::TooLong);
        }
        let alternatives = expand_braces(&chars)?
            .iter()
            .map(|alt| tokenize(alt))
            .collect::<Result<_, _>>()?;
        Ok(Self { alternatives })
    }

    /// Whether `name` (a base name) matches.
    pub fn matches(&self, name: &str) -> bool {
        let name: Vec<char> = name.chars().collect();
        self.alternatives.iter().any(|tokens| match_tokens(tokens, &name))
    }
}

/// Splits `{a,b}` alternatives (innermost nesting included) into plain patterns.
fn expand_braces(chars: &[char]) -> Result<Vec<Vec<char>>, GlobError> {
    // Find the first top-level `{` and its matching `}`, honouring escapes and classes.
    let mut i = 0;
    let mut open = None;
    let mut depth = 0usize;
    let mut commas = Vec::new();
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 1,
            '[' => i = class_end(chars, i)?,
            '{' => {
                if depth == 0 {
                    open = Some(i);
                }
                depth += 1;
            }
            ',' if depth == 1 => commas.push(i),
            '}' => {
                if depth == 0 {
                    return Err(GlobError::UnbalancedBraces);
                }
                depth -= 1;
                if depth == 0 {
                    let start = open.unwrap_or(0);
                    let (prefix, suffix) = (&chars[..start], &chars[i + 1..]);
                    let mut bounds = vec![start];
                    bounds.extend(&commas);
                    bounds.push(i);
                    let mut out = Vec::new();
                    for w in bounds.windows(2) {
                        let mut alt = prefix.to_vec();
                        alt.extend_from_slice(&chars[w[0] + 1..w[1]]);
                        alt.extend_from_slice(suffix);
                        for expanded in expand_braces(&alt)? {
                            out.push(expanded);
                            if out.len() > MAX_ALTERNATIVES {
                                return Err(GlobError::TooManyAlternatives);
                            }
                        }
                    }
                    return Ok(out);
                }
            }
            _ => {}
        }
        i += 1;
    }
    if depth > 0 {
        return Err(GlobError::UnbalancedBraces);
    }
    Ok(vec![chars.to_vec()])
}

/// Index of the `]` closing the class that starts at `start` (a `]` right after `[`, `[!` or
/// `[^` is a member, not the end).
fn class_end(chars: &[char], start: usize) -> Result<usize, GlobError> {
    let mut i = start + 1;
    if matches!(chars.get(i), Some('!' | '^')) {
        i += 1;
    }
    if chars.get(i) == Some(&']') {
        i += 1;
    }
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 2,
            ']' => return Ok(i),
            _ => i += 1,
        }
    }
    Err(GlobError::UnclosedClass)
}

fn tokenize(chars: &[char]) -> Result<Vec<Token>, GlobError> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '\\' => {
                let c = *chars.get(i + 1).ok_or(GlobError::DanglingEscape)?;
                out.push(Token::Literal(c));
                i += 2;
            }
            '*' => {
                let run = chars[i..].iter().take_while(|&&c| c == '*').count();
                let whole_component = i == 0 || chars[i - 1] == '/';
                i += run;
                // `**/` as a whole path component matches any number of directories, and a
                // base name has none. Any other run of stars is one `*`.
                if run == 2 && whole_component && chars.get(i) == Some(&'/') {
                    i += 1;
                    continue;
                }
                if out.last() != Some(&Token::Star) {
                    out.push(Token::Star);
                }
            }
            '?' => {
                out.push(Token::One);
                i += 1;
            }
            '[' => {
                let end = class_end(chars, i)?;
                out.push(class(&chars[i + 1..end]));
                i = end + 1;
            }
            c => {
                out.push(Token::Literal(c));
                i += 1;
            }
        }
    }
    Ok(out)
}

fn class(body: &[char]) -> Token {
    let (negated, body) = match body.first() {
        Some('!' | '^') => (true, &body[1..]),
        _ => (false, body),
    };
    let mut ranges = Vec::new();
    let mut i = 0;
    while i < body.len() {
        let mut c = body[i];
        if c == '\\' && i + 1 < body.len() {
            i += 1;
            c = body[i];
        }
        if body.get(i + 1) == Some(&'-') && i + 2 < body.len() {
            let mut hi = body[i + 2];
            i += 2;
            if hi == '\\' && i + 1 < body.len() {
                i += 1;
                hi = body[i];
            }
            ranges.push((c, hi));
        } else {
            ranges.push((c, c));
        }
        i += 1;
    }
    Token::Class { ranges, negated }
}

fn token_matches(t: &Token, c: char) -> bool {
    match t {
        Token::Literal(l) => *l == c,
        Token::One => c != '/',
        Token::Star => false,
        Token::Class { ranges, negated } => {
            c != '/' && ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated
        }
    }
}

/// Iterative wildcard matching: on a mismatch, let the most recent `*` absorb one more
/// character and retry from there.
fn match_tokens(tokens: &[Token], name: &[char]) -> bool {
    let (mut t, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match tokens.get(t) {
            Some(Token::Star) => {
                star = Some((t, n));
                t += 1;
            }
            Some(tok) if token_matches(tok, name[n]) => {
                t += 1;
                n += 1;
            }
            _ => match star {
                Some((st, sn)) if name[sn] != '/' => {
                    star = Some((st, sn + 1));
                    t = st + 1;
                    n = sn + 1;
                }
                _ => return false,
            },
        }
    }
    tokens[t..].iter().all(|tok| *tok == Token::Star)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(pattern: &str, name: &str) -> bool {
        Glob::new(pattern).unwrap().matches(name)
    }

    /// Issue 20 (found by running `fuzz/` target `glob` on long inputs): brace expansion of
    /// a 60 KB pattern (`{}` repeated, or `{a,b}` groups before a long tail) took over 2 GB.
    #[test]
    fn issue20_long_patterns_are_refused() {
        assert_eq!(Glob::new(&"{}".repeat(30_000)).err(), Some(GlobError::TooLong));
        let wide = format!("{}{}", "{a,b}".repeat(10), "x".repeat(60_000));
        assert_eq!(Glob::new(&wide).err(), Some(GlobError::TooLong));
        let longest = "{}".repeat(MAX_PATTERN / 2);
        assert!(Glob::new(&longest).unwrap().matches(""));
        let wide = format!("{}{}", "{a,b}".repeat(10), "x".repeat(MAX_PATTERN - 50));
        assert!(Glob::new(&wide).is_ok());
    }

    #[test]
    fn doublestar_on_base_names() {
        assert!(m("*.py", "a.py"));
        assert!(!m("*.py", "a.pyc"));
        assert!(m("**/x", "x"));
        assert!(m("**/*.md", "README.md"));
        assert!(m("**", "anything"));
        assert!(m("{a,b}.txt", "b.txt"));
        assert!(!m("{a,b}.txt", "c.txt"));
        assert!(m("{a,{b,c}d}", "cd"));
        assert!(m("[a-c]?[!x]", "b1y"));
        assert!(!m("[a-c]?[!x]", "b1x"));
        assert!(m("[]]", "]"));
        assert!(m("\\*", "*"));
        assert!(!m("\\*", "a"));
        assert!(m("a*b*c", "aXXbYYc"));
        assert!(!m("a*b*c", "aXXbYY"));
        assert!(!m("dir/x", "x"), "a base name has no directories");
        assert!(m("", ""));
        for bad in ["[", "{a", "a}", "x\\"] {
            assert!(Glob::new(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Glob::new(&"{a,b}".repeat(12)).unwrap_err(),
            GlobError::TooManyAlternatives
        );
    }

    proptest! {
        /// The reference: globset with literal separators, the crate this replaces.
        #[test]
        fn agrees_with_globset(pattern in "[ab*?.{},\\[\\]!^\\\\/-]{0,10}", name in "[ab.]{0,8}") {
            // globset drops empty alternatives (`{,x}`), where doublestar and shells keep them,
            // and lets a trailing `**/` match any name, where a base name has no `/` to end in.
            if ["{,", ",,", ",}", "{}"].iter().any(|e| pattern.contains(e)) || pattern.ends_with('/') {
                return Ok(());
            }
            let reference = globset::GlobBuilder::new(&pattern).literal_separator(true).backslash_escape(true).build();
            let ours = Glob::new(&pattern);
            if let (Ok(r), Ok(o)) = (reference, ours) {
                prop_assert_eq!(o.matches(&name), r.compile_matcher().is_match(&name), "pattern {:?} name {:?}", pattern, name);
            }
        }

        #[test]
        fn never_panics(pattern in "\\PC{0,16}", name in "\\PC{0,16}") {
            if let Ok(g) = Glob::new(&pattern) {
                let _ = g.matches(&name);
            }
        }
    }
}
