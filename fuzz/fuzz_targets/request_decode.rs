//! A request frame (the bytes after the size field) as a client may send it:
//! the header is parsed, and the body decoded as every advertised version of
//! its API. Never a panic, never an allocation sized by a declared count.
#![no_main]

use bytes::Bytes;
use kafka_protocol::messages::RequestKind;
use libfuzzer_sys::fuzz_target;
use sluice_protocol::api::supported_versions;
use sluice_protocol::frame::parse_request;

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = parse_request(Bytes::copy_from_slice(data)) else {
        return;
    };
    let Some((key, min, max)) = supported_versions(frame.api_key) else {
        return;
    };
    // The header's version, then the others: the same body bytes under every
    // version's layout reach more of the decoder.
    let mut versions: Vec<i16> = vec![frame.api_version];
    versions.extend((min..=max).filter(|v| *v != frame.api_version));
    for version in versions {
        if !(min..=max).contains(&version) {
            continue;
        }
        let mut body = frame.body.clone();
        let _ = RequestKind::decode(key, &mut body, version);
    }
});
