//! ApiVersions: the table of `sluice_protocol::api::SUPPORTED_APIS`. A version
//! newer than we know gets UNSUPPORTED_VERSION with the list, in a v0 body (so
//! any client can read it); the response header is always v0.

use super::HandlerResult;
use crate::shard::Shard;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiVersionsRequest, ApiVersionsResponse};
use sluice_protocol::api::{error_code, SUPPORTED_APIS};
use sluice_protocol::frame::{decode_body, encode_response, RequestFrame};
use sluice_protocol::kafka_protocol;

const MAX_VERSION: i16 = 3;

pub fn handle(shard: &Shard, frame: RequestFrame) -> HandlerResult {
    let api_keys: Vec<ApiVersion> = SUPPORTED_APIS
        .iter()
        .map(|(key, min, max)| {
            ApiVersion::default()
                .with_api_key(*key as i16)
                .with_min_version(*min)
                .with_max_version(*max)
        })
        .collect();
    if frame.api_version > MAX_VERSION || frame.api_version < 0 {
        shard.error_answer(
            frame.api_key,
            format_args!(
                "version {} (supported 0..={MAX_VERSION})",
                frame.api_version
            ),
            error_code::UNSUPPORTED_VERSION,
        );
        let body = ApiVersionsResponse::default()
            .with_error_code(error_code::UNSUPPORTED_VERSION)
            .with_api_keys(api_keys);
        return encode_response(frame.correlation_id, 0, &body, 0).map(|f| Some(f.into()));
    }
    let _request: ApiVersionsRequest = decode_body(frame.body.clone(), frame.api_version)?;
    let body = ApiVersionsResponse::default()
        .with_error_code(error_code::NONE)
        .with_api_keys(api_keys);
    encode_response(frame.correlation_id, 0, &body, frame.api_version).map(|f| Some(f.into()))
}
