//! A row read back from the store (Table Storage entity), read as a connection, a pending
//! authorization and a consent link. Input: an entity as JSON, a NUL byte, then the plaintext that
//! a property set to "seal" is sealed from (so decoding after decryption is reached).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| oauth_broker_fuzz::stored_row(data));
