//! The account behind a consent. Input: a mode byte, then text: (0) an id_token, a newline, the
//! integration's issuer (empty: none), a newline, its client id; (1) the issuer, the client id and
//! the id_token's claims (JSON), one per line, made into an unsigned JWT; (2) a JSON pointer, a
//! newline and a token response (a `token_field` source); (3) a JSON pointer, a newline and a
//! user-info answer; (4) a parameter name, a newline and the callback's query string.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| oauth_broker_fuzz::account(data));
