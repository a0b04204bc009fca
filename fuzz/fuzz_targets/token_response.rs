//! The token endpoint's answer (code exchange, refresh): any status, JSON or form body.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| oauth_broker_fuzz::token_response(data));
