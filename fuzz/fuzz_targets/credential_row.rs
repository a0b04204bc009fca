//! A pipeline credential's row read back from the table (hostile contents), then authenticated
//! with. Input: the entity as JSON, a NUL, the secret, a NUL, a JSON object of properties a table
//! writer sets afterwards (`null` removes one). `"SecretHash": "seal"` is replaced by the keyed hash
//! the broker makes for the row as it reads then: only such a row, untouched in what the hash binds,
//! may authenticate.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| oauth_broker_fuzz::credential_row(data));
