//! HTTP Basic client credentials (the Authorization header of the token routes). Input: a mode
//! byte; then either a raw header value (mode even) or a client id, a newline and a secret, which
//! are encoded as a client does (RFC 6749 §2.3.1) and must decode to exactly themselves.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| oauth_broker_fuzz::basic_credentials(data));
