//! `Range: bytes=...` on blob GETs, as RFC 9110 §14 defines it (containerd resumes downloads and may
//! fetch chunks in parallel). Protocol, not I/O: it turns a header and a blob length into what to
//! send, and every position is computed with saturating arithmetic, because both numbers come from
//! outside (a client may write `bytes=5-18446744073709551615`, which is legal and means "to the end").

/// The byte range to send, end exclusive. Only [`parse`] makes one for a known length, so for a
/// partial answer `start < end <= size` always holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

impl ByteRange {
    /// Bytes in the range (the `Content-Length` of a 206).
    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `Content-Range` value of a 206 for this range of a `size`-byte blob (last byte inclusive).
    pub fn content_range(&self, size: u64) -> String {
        format!("bytes {}-{}/{size}", self.start, self.end.saturating_sub(1))
    }
}

/// What to answer a GET with.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable Range header: send everything with 200. RFC 9110 lets a server ignore a Range it
    /// does not understand or will not serve (other units, several ranges, bad syntax).
    Full,
    /// 206 with exactly these bytes.
    Partial(ByteRange),
    /// 416 with `Content-Range: bytes */size`.
    Unsatisfiable,
}

/// One `range-spec` of RFC 9110 §14.1.1, numbers saturated at `u64::MAX` (a position beyond any
/// blob behaves the same whatever its exact value).
enum Spec {
    /// `first-pos "-" [ last-pos ]`
    Int { first: u64, last: Option<u64> },
    /// `"-" suffix-length`
    Suffix(u64),
}

/// Parses a `Range` header against a blob of `size` bytes.
///
/// - `bytes=a-b`: bytes a..=b, b clamped to the last byte; `b < a` is invalid (ignored).
/// - `bytes=a-`: from a to the end. `a >= size` is unsatisfiable (416).
/// - `bytes=-n`: the last n bytes (the whole blob when n >= size); `-0` is unsatisfiable.
/// - A zero-length blob has no satisfiable int-range; a suffix is answered with the (empty) whole.
/// - Several ranges, other units, anything malformed: the whole blob (200), as RFC 9110 allows.
pub fn parse(header: Option<&str>, size: u64) -> RangeRequest {
    let Some(spec) = header.and_then(parse_spec) else {
        return RangeRequest::Full;
    };
    match spec {
        Spec::Suffix(0) => RangeRequest::Unsatisfiable,
        // "The only satisfiable form on a zero-length representation", yet there is no byte to name
        // in a Content-Range: send the empty whole with 200.
        Spec::Suffix(_) if size == 0 => RangeRequest::Full,
        Spec::Suffix(n) => RangeRequest::Partial(ByteRange { start: size.saturating_sub(n), end: size }),
        Spec::Int { first, .. } if first >= size => RangeRequest::Unsatisfiable,
        Spec::Int { first, last } => {
            let end = last.map_or(size, |l| l.saturating_add(1).min(size));
            RangeRequest::Partial(ByteRange { start: first, end })
        }
    }
}

/// The single `range-spec` of a `bytes=` header, or `None` for anything to ignore.
fn parse_spec(header: &str) -> Option<Spec> {
    let (unit, set) = header.trim().split_once('=')?;
    // The range unit is case-insensitive (RFC 9110 §14.1).
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return None;
    }
    // A list of ranges would need a multipart answer; serving the whole blob is allowed instead.
    // Empty list elements ("bytes=0-1,") still make it a list.
    if set.contains(',') {
        return None;
    }
    let (first, last) = set.trim().split_once('-')?;
    if first.is_empty() {
        return Some(Spec::Suffix(digits(last)?));
    }
    let first_n = digits(first)?;
    if last.is_empty() {
        return Some(Spec::Int { first: first_n, last: None });
    }
    let last_n = digits(last)?;
    // Compared as written: both may be past u64::MAX, where the saturated numbers would be equal.
    if decimal_less(last, first) {
        return None;
    }
    Some(Spec::Int { first: first_n, last: Some(last_n) })
}

/// `a < b` for two `1*DIGIT` strings of any length.
fn decimal_less(a: &str, b: &str) -> bool {
    let (a, b) = (a.trim_start_matches('0'), b.trim_start_matches('0'));
    (a.len(), a) < (b.len(), b)
}

/// `1*DIGIT` as a number, saturated at `u64::MAX`. Unlike `str::parse`, a sign or anything but
/// ASCII digits is refused.
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.bytes().fold(0u64, |n, b| n.saturating_mul(10).saturating_add(u64::from(b - b'0'))))
}
