//! The admin API's OpenAPI 3 description, served at `/api/openapi.json`.

/// The document (checked to be valid JSON by a unit test).
pub const SPEC: &str = include_str!("openapi.json");

#[cfg(test)]
mod tests {
    #[test]
    fn spec_is_json_and_lists_every_route() {
        let v: serde_json::Value = serde_json::from_str(super::SPEC).expect("valid JSON");
        for path in [
            "/api/rooms",
            "/api/rooms/{room}/kick",
            "/api/users/{user}/messages",
            "/api/drain",
            "/api/auth/register",
            "/api/auth/login",
            "/api/calls",
            "/api/endpoints",
            "/api/dev/token",
        ] {
            assert!(v["paths"][path].is_object(), "{path} missing");
        }
    }
}
