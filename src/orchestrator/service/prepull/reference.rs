//! The image reference grammar of prepulls, a subset of the distribution project's:
//!
//! ```text
//! reference := [domain "/"] path [":" tag] ["@" digest]
//! domain    := host [":" port]            host: DNS labels joined by "."; port: 1–65535
//! path      := component ("/" component)* component: [a-z0-9]+ ((\.|_|__|-+)[a-z0-9]+)*
//! tag       := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
//! digest    := "sha256:" 64 lowercase hex digits
//! ```
//!
//! The first `/`-separated part is a domain when more parts follow and it holds a `.` or a
//! `:`, or is `localhost` (as Docker decides). At most 512 characters. Pure.

use crate::orchestrator::error::Error;

/// The longest reference accepted.
pub const MAX_LEN: usize = 512;

/// Checks `text` against the grammar and returns it normalised: `:latest` is added when it
/// has neither tag nor digest (a pull of a bare name would otherwise fetch every tag).
pub fn normalize(text: &str) -> Result<String, Error> {
    let bad = |why: &str| Error::InvalidImage(format!("image {text:?} is not a valid reference: {why}"));
    if text.is_empty() {
        return Err(Error::InvalidImage("image is required".into()));
    }
    if text.len() > MAX_LEN {
        return Err(Error::InvalidImage(format!(
            "image reference is {} characters long; at most {MAX_LEN} are allowed",
            text.len()
        )));
    }
    if !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad("only printable ASCII without spaces is allowed"));
    }
    let (name_tag, digest) = match text.split_once('@') {
        Some((name_tag, digest)) => (name_tag, Some(digest)),
        None => (text, None),
    };
    if let Some(digest) = digest {
        let hex = digest
            .strip_prefix("sha256:")
            .ok_or_else(|| bad("the digest must be sha256:<64 hex digits>"))?;
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(bad("the digest must be sha256:<64 lowercase hex digits>"));
        }
    }
    // A ':' after the last '/' starts the tag; one before it belongs to the domain's port.
    let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_tag[last_slash..].find(':') {
        Some(i) => (&name_tag[..last_slash + i], Some(&name_tag[last_slash + i + 1..])),
        None => (name_tag, None),
    };
    if let Some(tag) = tag {
        if !valid_tag(tag) {
            return Err(bad(
                "the tag must be 1–128 of [A-Za-z0-9_.-], not starting with '.' or '-'",
            ));
        }
    }
    let parts: Vec<&str> = name.split('/').collect();
    let (domain, path) = match parts.split_first() {
        Some((first, rest)) if !rest.is_empty() && is_domain_like(first) => (Some(*first), rest),
        _ => (None, &parts[..]),
    };
    if let Some(domain) = domain {
        valid_domain(domain).map_err(|why| bad(&why))?;
    }
    if path.is_empty() || path.iter().any(|c| c.is_empty()) {
        return Err(bad("the repository path is empty or has an empty component"));
    }
    for component in path {
        if component.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(bad("repository names must be lowercase"));
        }
        if !valid_component(component) {
            return Err(bad(&format!(
                "path component {component:?} must be lowercase letters and digits, separated by '.', '_', '__' or '-'"
            )));
        }
    }
    Ok(if tag.is_none() && digest.is_none() {
        format!("{text}:latest")
    } else {
        text.to_owned()
    })
}

fn is_domain_like(part: &str) -> bool {
    part.contains(['.', ':']) || part == "localhost"
}

fn valid_domain(domain: &str) -> Result<(), String> {
    let (host, port) = match domain.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (domain, None),
    };
    if let Some(port) = port {
        let ok = !port.is_empty()
            && port.len() <= 5
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p));
        if !ok {
            return Err(format!("registry port {port:?} must be a number from 1 to 65535"));
        }
    }
    let label_ok = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b.len() <= 63
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-'
    };
    if host.is_empty() || !host.split('.').all(label_ok) {
        return Err(format!("registry host {host:?} must be DNS labels joined by '.'"));
    }
    Ok(())
}

/// `[a-z0-9]+ ((\.|_|__|-+)[a-z0-9]+)*`
fn valid_component(c: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let b = c.as_bytes();
    let mut i = 0;
    loop {
        let start = i;
        while i < b.len() && alnum(b[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == b.len() {
            return true;
        }
        // A separator: '.', '_', '__' or a run of '-'.
        match b[i] {
            b'.' => i += 1,
            b'_' => i += if b.get(i + 1) == Some(&b'_') { 2 } else { 1 },
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
    }
}

fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    let word = |c: &u8| c.is_ascii_alphanumeric() || *c == b'_';
    !b.is_empty() && b.len() <= 128 && word(&b[0]) && b.iter().all(|c| word(c) || matches!(c, b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:a94cda585e4dbce29e0f762d1d925b9517b08405ee783f02a2de4e586c45563e";

    #[test]
    fn good_references_are_normalised() {
        let cases = [
            ("busybox", "busybox:latest"),
            ("python:3.11-slim", "python:3.11-slim"),
            ("library/python:3", "library/python:3"),
            ("127.0.0.1:5000/prepull-test:1", "127.0.0.1:5000/prepull-test:1"),
            (
                "127.0.0.1:5000/prepull-test",
                "127.0.0.1:5000/prepull-test:latest",
            ),
            (
                "localhost/a/b__c.d-e---f:V_1.0-rc",
                "localhost/a/b__c.d-e---f:V_1.0-rc",
            ),
            (
                "Registry.Example.com/team/app:1",
                "Registry.Example.com/team/app:1",
            ),
            ("ghcr.io/org/img:tag", "ghcr.io/org/img:tag"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input).unwrap(), want, "{input}");
        }
        let pinned = format!("busybox@{DIGEST}");
        assert_eq!(normalize(&pinned).unwrap(), pinned);
        let both = format!("127.0.0.1:5000/x:1@{DIGEST}");
        assert_eq!(normalize(&both).unwrap(), both);
    }

    #[test]
    fn bad_references_are_invalid_image_errors_saying_why() {
        let long = format!("{}:1", "a".repeat(MAX_LEN));
        let cases: [(&str, &str); 19] = [
            ("", "required"),
            (&long, "at most 512"),
            ("busy box", "printable ASCII"),
            ("busybox\n", "printable ASCII"),
            ("Busybox", "lowercase"),
            ("busybox:", "tag"),
            ("busybox:-x", "tag"),
            ("busybox:a/b", "port"),
            ("busybox@sha256:abc", "64"),
            ("busybox@md5:0123", "sha256"),
            ("/busybox", "empty"),
            ("a//b", "empty"),
            ("busybox/", "empty"),
            ("127.0.0.1:99999/x:1", "port"),
            ("127.0.0.1:/x:1", "port"),
            ("-bad.example.com/x", "DNS labels"),
            ("a.b/x_-y", "path component"),
            ("a..b", "path component"),
            ("x:1:2", "tag"),
        ];
        for (input, says) in cases {
            match normalize(input) {
                Err(Error::InvalidImage(m)) => assert!(m.contains(says), "{input:?}: {m}"),
                other => panic!("{input:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn the_longest_reference_is_accepted_and_one_more_is_not() {
        let at_limit = format!("{}:1", "a".repeat(MAX_LEN - 2));
        assert_eq!(normalize(&at_limit).unwrap(), at_limit);
        let over = format!("{}:1", "a".repeat(MAX_LEN - 1));
        assert!(normalize(&over).is_err());
    }
}
