//! Kafka request framing: a 4-byte big-endian size, then a request header
//! (v0/v1/v2), then the body. Pure functions over bytes; the connection does
//! the I/O.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable};

/// The smallest header: api key, api version, correlation id.
pub const REQUEST_HEADER_BYTES_MIN: usize = 8;
pub const FRAME_SIZE_BYTES: usize = 4;
/// Default largest request frame (Kafka's socket.request.max.bytes).
pub const FRAME_BYTES_MAX_DEFAULT: usize = 100 << 20;

/// What is known about a request before its body is decoded.
#[derive(Debug, Clone)]
pub struct RequestFrame {
    pub api_key: i16,
    pub api_version: i16,
    pub correlation_id: i32,
    pub client_id: Option<String>,
    /// The body after the header.
    pub body: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// Too short to hold even api key, version and correlation id.
    TooShort { bytes: usize },
    /// The header could not be decoded (truncated client id, bad tagged fields).
    BadHeader {
        api_key: i16,
        api_version: i16,
        correlation_id: i32,
        detail: String,
    },
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::TooShort { bytes } => write!(f, "request of {bytes} bytes is shorter than a header"),
            FrameError::BadHeader { api_key, api_version, correlation_id, detail } => write!(
                f,
                "bad request header (api key {api_key} v{api_version}, correlation id {correlation_id}): {detail}"
            ),
        }
    }
}

/// Splits a request (the bytes after the size field) into header and body.
/// For an API key Sluice does not know, the header is read as v1 (the
/// layout every non-flexible request shares) so an error can still be logged.
pub fn parse_request(mut frame: Bytes) -> Result<RequestFrame, FrameError> {
    if frame.len() < REQUEST_HEADER_BYTES_MIN {
        return Err(FrameError::TooShort { bytes: frame.len() });
    }
    let api_key = i16::from_be_bytes([frame[0], frame[1]]);
    let api_version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let header_version = match ApiKey::try_from(api_key) {
        // Kafka reads ApiVersions requests of unknown (newer) versions with the
        // v2 header only if it knows the version; otherwise with v1 so the
        // UNSUPPORTED_VERSION answer can still be sent.
        Ok(key) if key.valid_versions().max >= api_version && api_version >= 0 => {
            key.request_header_version(api_version)
        }
        _ => 1,
    };
    let bad = |detail: String| FrameError::BadHeader {
        api_key,
        api_version,
        correlation_id,
        detail,
    };
    let header =
        RequestHeader::decode(&mut frame, header_version).map_err(|e| bad(e.to_string()))?;
    Ok(RequestFrame {
        api_key,
        api_version,
        correlation_id,
        client_id: header.client_id.map(|c| c.to_string()),
        body: frame,
    })
}

/// Builds a whole response frame: size, response header, body.
pub fn encode_response<T: Encodable>(
    correlation_id: i32,
    header_version: i16,
    body: &T,
    body_version: i16,
) -> Result<Bytes, String> {
    // Sized up front: a fetch response carries megabytes of records, and
    // growing the buffer would copy them again at every doubling.
    let body_bytes = body.compute_size(body_version).map_err(|e| e.to_string())?;
    let mut buf = BytesMut::with_capacity(FRAME_SIZE_BYTES + 64 + body_bytes);
    buf.put_u32(0);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    header
        .encode(&mut buf, header_version)
        .map_err(|e| e.to_string())?;
    body.encode(&mut buf, body_version)
        .map_err(|e| e.to_string())?;
    let size = (buf.len() - FRAME_SIZE_BYTES) as u32;
    buf[..4].copy_from_slice(&size.to_be_bytes());
    Ok(buf.freeze())
}

/// A response frame (size, header, body) as buffers to write in order: one
/// for most responses; for a fetch, the stored batches' own buffers between
/// small ones (see `fetch_response`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseFrame {
    pub parts: Vec<Bytes>,
}

impl ResponseFrame {
    pub fn len(&self) -> usize {
        self.parts.iter().map(|p| p.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole frame in one buffer (a copy unless it is one part already).
    pub fn to_bytes(&self) -> Bytes {
        match self.parts.as_slice() {
            [one] => one.clone(),
            parts => Bytes::from(parts.concat()),
        }
    }
}

impl From<Bytes> for ResponseFrame {
    fn from(frame: Bytes) -> ResponseFrame {
        ResponseFrame { parts: vec![frame] }
    }
}

/// Decodes a request body of a known type and version. Bytes after the body
/// are ignored, as Kafka brokers do (librdkafka 2.x sends a few after some
/// flexible requests).
pub fn decode_body<T: Decodable>(mut body: Bytes, version: i16) -> Result<T, String> {
    T::decode(&mut body, version).map_err(|e| format!("{e:#}"))
}

/// Builds a whole request frame (size, header, body): the client side, used by
/// `sluice-bench`.
pub fn encode_request<T: Encodable>(
    api_key: ApiKey,
    api_version: i16,
    correlation_id: i32,
    client_id: &str,
    body: &T,
) -> Result<Bytes, String> {
    let body_bytes = body.compute_size(api_version).map_err(|e| e.to_string())?;
    let mut buf = BytesMut::with_capacity(FRAME_SIZE_BYTES + 64 + client_id.len() + body_bytes);
    buf.put_u32(0);
    RequestHeader::default()
        .with_request_api_key(api_key as i16)
        .with_request_api_version(api_version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(kafka_protocol::protocol::StrBytes::from_string(
            client_id.to_string(),
        )))
        .encode(&mut buf, api_key.request_header_version(api_version))
        .map_err(|e| e.to_string())?;
    body.encode(&mut buf, api_version)
        .map_err(|e| e.to_string())?;
    let size = (buf.len() - FRAME_SIZE_BYTES) as u32;
    buf[..4].copy_from_slice(&size.to_be_bytes());
    Ok(buf.freeze())
}

/// Reads the correlation id at the front of a response frame (the bytes after
/// the size field). Every response header starts with it.
pub fn response_correlation_id(frame: &[u8]) -> Option<i32> {
    Some(i32::from_be_bytes(frame.get(..4)?.try_into().ok()?))
}

/// Decodes a response frame (the bytes after the size field) to a known type:
/// skips the response header of the version `api_key`/`api_version` use.
pub fn decode_response<T: Decodable>(
    mut frame: Bytes,
    api_key: ApiKey,
    api_version: i16,
) -> Result<T, String> {
    ResponseHeader::decode(&mut frame, api_key.response_header_version(api_version))
        .map_err(|e| format!("bad response header: {e:#}"))?;
    T::decode(&mut frame, api_version).map_err(|e| format!("{e:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{ApiVersionsRequest, MetadataRequest};
    use kafka_protocol::protocol::StrBytes;

    fn request_bytes<T: Encodable>(key: ApiKey, version: i16, body: &T) -> Bytes {
        let mut buf = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(77)
            .with_client_id(Some(StrBytes::from_static_str("test")))
            .encode(&mut buf, key.request_header_version(version))
            .unwrap();
        body.encode(&mut buf, version).unwrap();
        buf.freeze()
    }

    #[test]
    fn client_requests_parse_as_the_broker_reads_them_and_responses_round_trip() {
        use kafka_protocol::messages::{ApiVersionsResponse, MetadataResponse};
        for version in [1i16, 9, 12] {
            let body = MetadataRequest::default();
            let frame = encode_request(ApiKey::Metadata, version, 41, "bench", &body).unwrap();
            let size = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
            assert_eq!(size, frame.len() - FRAME_SIZE_BYTES);
            let parsed = parse_request(frame.slice(4..)).unwrap();
            assert_eq!(
                (parsed.api_key, parsed.api_version, parsed.correlation_id),
                (ApiKey::Metadata as i16, version, 41)
            );
            assert_eq!(parsed.client_id.as_deref(), Some("bench"));
            let back: MetadataRequest = decode_body(parsed.body, version).unwrap();
            assert_eq!(back, body);

            let response =
                MetadataResponse::default().with_throttle_time_ms(if version >= 3 { 7 } else { 0 });
            let header_version = ApiKey::Metadata.response_header_version(version);
            let wire = encode_response(41, header_version, &response, version).unwrap();
            assert_eq!(response_correlation_id(&wire[4..]), Some(41));
            let decoded: MetadataResponse =
                decode_response(wire.slice(4..), ApiKey::Metadata, version).unwrap();
            assert_eq!(decoded, response);
        }
        // A response cut short is an error, not a panic.
        let wire = encode_response(1, 0, &ApiVersionsResponse::default(), 2).unwrap();
        let cut = wire.slice(4..wire.len() - 2);
        assert!(decode_response::<ApiVersionsResponse>(cut, ApiKey::ApiVersions, 2).is_err());
        assert_eq!(response_correlation_id(&[0, 1]), None);
    }

    #[test]
    fn parses_flexible_and_plain_headers() {
        for version in [1, 9, 12] {
            let bytes = request_bytes(ApiKey::Metadata, version, &MetadataRequest::default());
            let frame = parse_request(bytes).unwrap();
            assert_eq!(frame.api_key, ApiKey::Metadata as i16);
            assert_eq!(frame.api_version, version);
            assert_eq!(frame.correlation_id, 77);
            assert_eq!(frame.client_id.as_deref(), Some("test"));
            let _: MetadataRequest = decode_body(frame.body, version).unwrap();
        }
    }

    #[test]
    fn short_and_truncated_headers_are_errors() {
        assert!(matches!(
            parse_request(Bytes::from_static(&[0, 3])),
            Err(FrameError::TooShort { bytes: 2 })
        ));
        let bytes = request_bytes(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
        // Cut inside the client id.
        assert!(matches!(
            parse_request(bytes.slice(..11)),
            Err(FrameError::BadHeader { .. })
        ));
    }

    #[test]
    fn response_frame_has_size_and_correlation_id() {
        let frame = encode_response(
            5,
            0,
            &kafka_protocol::messages::ApiVersionsResponse::default(),
            0,
        )
        .unwrap();
        let size = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(size, frame.len() - 4);
        assert_eq!(i32::from_be_bytes(frame[4..8].try_into().unwrap()), 5);
    }
}
