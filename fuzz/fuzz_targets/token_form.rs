//! `POST /api/oauth2/token`: its form (grant_type, client_id, client_secret, scope, resource) and
//! client authentication. Input: the Content-Type value, a NUL, the Authorization value, a NUL, the
//! body (an empty header part: no such header).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| oauth_broker_fuzz::token_form(data));
