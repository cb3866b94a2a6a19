//! What both servers' OpenAPI documents share: the header-key security scheme, rendering to
//! YAML, and the check that the checked-in `proto/` file is the document the code generates.

use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};

/// A security scheme named `scheme`: a key in the request header `header`.
pub struct HeaderKey {
    /// The scheme's name in the document.
    pub scheme: &'static str,
    /// The header carrying the key.
    pub header: &'static str,
}

impl utoipa::Modify for HeaderKey {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            self.scheme,
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new(self.header))),
        );
    }
}

/// `doc` as YAML, stamped with the package version.
pub fn yaml(mut doc: utoipa::openapi::OpenApi) -> String {
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc.to_yaml()
        .unwrap_or_else(|e| format!("# cannot render: {e}\n"))
}

/// Panics unless `proto/<file>` equals `generated`; with `UPDATE_PROTO` set, rewrites it first.
pub fn assert_proto_matches(file: &str, generated: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("proto")
        .join(file);
    if std::env::var_os("UPDATE_PROTO").is_some() {
        std::fs::write(&path, generated).unwrap();
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == generated,
        "proto/{file} is out of date; run `UPDATE_PROTO=1 cargo test proto_matches_code`"
    );
}

/// Describes every `text/event-stream` response as what a client parses from it: events whose
/// `data` is one JSON document of the schema the handler annotated (`contentMediaType` and
/// `contentSchema`, as OpenAPI 3.2's `itemSchema` spells it for SSE; schema-based tools then
/// validate each event's `data`, not the event as if it were the JSON).
pub struct SseEvents;

impl utoipa::Modify for SseEvents {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        use utoipa::openapi::RefOr;

        let event = |data: RefOr<utoipa::openapi::Schema>| {
            let string = || ObjectBuilder::new().schema_type(Type::String);
            ObjectBuilder::new()
                .schema_type(Type::Object)
                .description(Some("one SSE event: `id: N`, `data: <one JSON document>`"))
                .property("id", string())
                .property("event", string())
                .property(
                    "data",
                    string()
                        .content_media_type("application/json")
                        .content_schema(Some(data)),
                )
                .required("data")
                .build()
                .into()
        };
        for item in openapi.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                for response in op.responses.responses.values_mut() {
                    let RefOr::T(response) = response else { continue };
                    let Some(RefOr::T(content)) = response.content.get_mut("text/event-stream") else {
                        continue;
                    };
                    if let Some(data) = content.schema.take() {
                        content.schema = Some(event(data));
                    }
                }
            }
        }
    }
}
