//! An `Authorization: Bearer` header value as the Entra ID check reads it: the JWT's header and claims.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| oauth_broker_fuzz::entra_token(data));
