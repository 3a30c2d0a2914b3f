//! How an agent found an action's inputs (`re_server.v1.InputFetch` in
//! `auxiliary_metadata`): its local cache or the server's CAS.
use prost::Message;
use re_proto::re_server::v1::InputFetch;

pub const TYPE_URL: &str = "type.googleapis.com/re_server.v1.InputFetch";

pub fn to_any(fetch: &InputFetch) -> prost_types::Any {
    prost_types::Any { type_url: TYPE_URL.into(), value: fetch.encode_to_vec() }
}

pub fn from_any(any: &prost_types::Any) -> Option<InputFetch> {
    (any.type_url == TYPE_URL).then(|| InputFetch::decode(any.value.as_slice()).ok()).flatten()
}
