use super::range::{parse, ByteRange, RangeRequest};

#[test]
fn ranges() {
    assert_eq!(parse(None, 10), RangeRequest::Full);
    assert_eq!(parse(Some("bytes=0-4"), 10), RangeRequest::Partial(ByteRange { start: 0, end: 5 }));
    assert_eq!(parse(Some("bytes=5-"), 10), RangeRequest::Partial(ByteRange { start: 5, end: 10 }));
    assert_eq!(parse(Some("bytes=5-100"), 10), RangeRequest::Partial(ByteRange { start: 5, end: 10 }));
    assert_eq!(parse(Some("bytes=-3"), 10), RangeRequest::Partial(ByteRange { start: 7, end: 10 }));
    assert_eq!(parse(Some("bytes=-30"), 10), RangeRequest::Partial(ByteRange { start: 0, end: 10 }));
    assert_eq!(parse(Some("bytes=10-"), 10), RangeRequest::Unsatisfiable);
    assert_eq!(parse(Some("bytes=-0"), 10), RangeRequest::Unsatisfiable);
    assert_eq!(parse(Some("bytes=0-1,3-4"), 10), RangeRequest::Full);
    assert_eq!(parse(Some("bytes=4-2"), 10), RangeRequest::Full);
    assert_eq!(parse(Some("items=0-1"), 10), RangeRequest::Full);
}
