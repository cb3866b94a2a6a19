//! Serving a file: opening it, validators (`ETag`, `Last-Modified`), `Range` parsing,
//! `Content-Disposition` names, and pumping its bytes (or a range of its lines) out in bounded
//! chunks. Synchronous; the HTTP layer runs [`pump`] on a blocking thread.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::buffers::Pool;
use super::FilesError;

/// Size of the chunks handed to the HTTP body.
const CHUNK: u64 = 512 << 10;

/// An open regular file and what the response headers need to know about it.
pub struct Download {
    /// The open file.
    pub file: File,
    /// Its size in bytes.
    pub size: u64,
    /// Last modification, for `Last-Modified`.
    pub modified: SystemTime,
    /// Strong validator from inode, size and mtime, quoted.
    pub etag: String,
    /// Base name, for `Content-Disposition`.
    pub name: String,
}

/// Opens `path` (following symlinks) for download; only regular files qualify.
pub fn open(path: &Path) -> Result<Download, FilesError> {
    let file = File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => FilesError::NotFound(path.to_owned()),
        _ => FilesError::io("open", path)(e),
    })?;
    let meta = file.metadata().map_err(FilesError::io("stat", path))?;
    if meta.is_dir() {
        return Err(FilesError::IsDirectory(path.to_owned()));
    }
    let mtime_ns = (meta.mtime() as i128) * 1_000_000_000 + meta.mtime_nsec() as i128;
    let modified = UNIX_EPOCH + Duration::from_secs(meta.mtime().max(0) as u64);
    Ok(Download {
        size: meta.len(),
        modified,
        etag: format!("\"{:x}-{:x}-{:x}\"", meta.ino(), meta.len(), mtime_ns),
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        file,
    })
}

/// Why a `Range` header cannot be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeError {
    /// Not `bytes=a-b`, `bytes=a-` or `bytes=-n`.
    Malformed,
    /// Starts at or past the end of the file, or asks for a zero-length suffix.
    Unsatisfiable,
}

/// Parses a `Range` header for a file of `size` bytes into an inclusive `(first, last)` byte
/// range. Only the first range of a list is served, as upstream does.
pub fn parse_range(header: &str, size: u64) -> Result<(u64, u64), RangeError> {
    let header = header.trim();
    let spec = header
        .get(..6)
        .filter(|unit| unit.eq_ignore_ascii_case("bytes="))
        .map(|_| &header[6..])
        .ok_or(RangeError::Malformed)?;
    let first = spec.split(',').next().unwrap_or_default().trim();
    let (a, b) = first.split_once('-').ok_or(RangeError::Malformed)?;
    let (a, b) = (a.trim(), b.trim());
    let number = |s: &str| -> Result<u64, RangeError> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            return Err(RangeError::Malformed);
        }
        // Digits that overflow u64 still name a position past any file.
        Ok(s.parse::<u64>().unwrap_or(u64::MAX))
    };
    match (a.is_empty(), b.is_empty()) {
        (true, true) => Err(RangeError::Malformed),
        (true, false) => {
            let n = number(b)?;
            if n == 0 || size == 0 {
                return Err(RangeError::Unsatisfiable);
            }
            Ok((size - n.min(size), size - 1))
        }
        (false, true) => {
            let start = number(a)?;
            if start >= size {
                return Err(RangeError::Unsatisfiable);
            }
            Ok((start, size - 1))
        }
        (false, false) => {
            let (start, end) = (number(a)?, number(b)?);
            if end < start {
                return Err(RangeError::Malformed);
            }
            if start >= size {
                return Err(RangeError::Unsatisfiable);
            }
            Ok((start, end.min(size - 1)))
        }
    }
}

/// Whether an `If-None-Match` header matches `etag` (weak comparison, `*` matches anything).
pub fn none_match(header: &str, etag: &str) -> bool {
    let weak = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    header.trim() == "*" || header.split(',').any(|t| weak(t) == weak(etag))
}

/// Whether an `If-Range` header still names this version of the file, so that the range may
/// be served: a strong ETag equal to ours, or exactly our `Last-Modified` date.
pub fn if_range_holds(header: &str, etag: &str, last_modified: &str) -> bool {
    let h = header.trim();
    if h.starts_with("W/") {
        return false;
    }
    if h.starts_with('"') {
        return h == etag;
    }
    h == last_modified
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) for HTTP date headers.
pub fn http_date(t: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = crate::wire::time::civil_from_days(days);
    format!(
        "{}, {day:02} {} {year:04} {:02}:{:02}:{:02} GMT",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `Content-Disposition` for a download named `name`: a plain quoted name when it is simple
/// ASCII, else the percent-encoded name in both `filename` and RFC 5987 `filename*`.
pub fn content_disposition(name: &str) -> String {
    let plain = !name.is_empty()
        && name
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\' && b != b'%');
    if plain {
        return format!("attachment; filename=\"{name}\"");
    }
    let mut enc = String::with_capacity(name.len() * 3);
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            enc.push(b as char);
        } else {
            enc.push_str(&format!("%{b:02X}"));
        }
    }
    format!("attachment; filename=\"{enc}\"; filename*=UTF-8''{enc}")
}

/// Buffers a download keeps for reuse (see [`Pool`]).
const POOLED: usize = 6;

/// Sends bytes `start..start+len` of `file` to `send` in chunks of at most 512 KiB, stopping
/// early when `send` returns false (the client went away).
pub fn pump(
    mut file: &File,
    start: u64,
    len: u64,
    mut send: impl FnMut(Bytes) -> bool,
) -> std::io::Result<()> {
    file.seek(SeekFrom::Start(start))?;
    let pool = Pool::new(CHUNK as usize, POOLED);
    let mut left = len;
    while left > 0 {
        let want = left.min(CHUNK) as usize;
        let mut buf = pool.take();
        let mut filled = 0;
        while filled < want {
            match file.read(&mut buf[filled..want]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if filled == 0 {
            // The file shrank under us; end the body short rather than wait.
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "file shrank while being sent",
            ));
        }
        left -= filled as u64;
        if !send(pool.lend(buf, filled)) {
            return Ok(());
        }
    }
    Ok(())
}

/// Sends lines `offset..offset+limit` (1-based; no limit means to the end) of `file`, each with
/// its line terminator, batched into chunks.
pub fn pump_lines(
    file: File,
    offset: u64,
    limit: Option<u64>,
    mut send: impl FnMut(Bytes) -> bool,
) -> std::io::Result<()> {
    let mut reader = BufReader::with_capacity(256 << 10, file);
    let mut skip = offset.saturating_sub(1);
    let mut sink = Vec::new();
    while skip > 0 {
        sink.clear();
        if reader.read_until(b'\n', &mut sink)? == 0 {
            return Ok(());
        }
        skip -= 1;
    }
    let mut left = limit.unwrap_or(u64::MAX);
    let mut batch = Vec::with_capacity(CHUNK as usize);
    while left > 0 {
        if reader.read_until(b'\n', &mut batch)? == 0 {
            break;
        }
        left -= 1;
        if batch.len() as u64 >= CHUNK && !send(Bytes::from(std::mem::take(&mut batch))) {
            return Ok(());
        }
    }
    if !batch.is_empty() {
        send(Bytes::from(batch));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn range_forms() {
        assert_eq!(parse_range("bytes=0-4", 10), Ok((0, 4)));
        assert_eq!(parse_range("bytes=5-", 10), Ok((5, 9)));
        assert_eq!(parse_range("bytes=-3", 10), Ok((7, 9)));
        assert_eq!(parse_range("bytes=-30", 10), Ok((0, 9)));
        assert_eq!(parse_range("bytes=2-100", 10), Ok((2, 9)));
        assert_eq!(parse_range("bytes=1-2, 5-6", 10), Ok((1, 2)));
        assert_eq!(parse_range("bytes=10-", 10), Err(RangeError::Unsatisfiable));
        assert_eq!(parse_range("bytes=-0", 10), Err(RangeError::Unsatisfiable));
        assert_eq!(parse_range("bytes=0-0", 0), Err(RangeError::Unsatisfiable));
        for bad in [
            "",
            "bytes=",
            "bytes=-",
            "bytes=a-b",
            "bytes=5-2",
            "items=0-1",
            "bytes=+1-2",
            "bytes 0-1",
        ] {
            assert_eq!(parse_range(bad, 10), Err(RangeError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn validators() {
        assert!(none_match("\"a\", W/\"b\"", "\"b\""));
        assert!(none_match("*", "\"x\""));
        assert!(!none_match("\"a\"", "\"b\""));
        assert!(if_range_holds("\"b\"", "\"b\"", "d"));
        assert!(!if_range_holds("W/\"b\"", "\"b\"", "d"));
        assert!(if_range_holds(
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "\"b\"",
            "Sun, 06 Nov 1994 08:49:37 GMT"
        ));
        assert_eq!(
            http_date(UNIX_EPOCH + Duration::from_secs(784_111_777)),
            "Sun, 06 Nov 1994 08:49:37 GMT"
        );
    }

    #[test]
    fn dispositions() {
        assert_eq!(content_disposition("a.txt"), "attachment; filename=\"a.txt\"");
        assert_eq!(
            content_disposition("ü \"x\".txt"),
            "attachment; filename=\"%C3%BC%20%22x%22.txt\"; filename*=UTF-8''%C3%BC%20%22x%22.txt"
        );
    }

    proptest! {
        #[test]
        fn ranges_stay_inside_the_file(size in 0u64..10_000, a in 0u64..12_000, b in 0u64..12_000, form in 0u8..3) {
            let header = match form {
                0 => format!("bytes={a}-{b}"),
                1 => format!("bytes={a}-"),
                _ => format!("bytes=-{b}"),
            };
            match parse_range(&header, size) {
                Ok((first, last)) => {
                    prop_assert!(first <= last && last < size);
                    if form == 0 { prop_assert_eq!(first, a); prop_assert_eq!(last, b.min(size - 1)); }
                    if form == 2 { prop_assert_eq!(last - first + 1, b.min(size)); }
                }
                Err(RangeError::Unsatisfiable) => prop_assert!(a >= size || b == 0 || size == 0),
                Err(RangeError::Malformed) => prop_assert!(form == 0 && b < a),
            }
        }

        #[test]
        fn range_parsing_never_panics(s in "\\PC*", size in any::<u64>()) {
            let _ = parse_range(&s, size);
        }
    }
}
