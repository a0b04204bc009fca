//! An event outbox row and a marker read back from the table (hostile contents). Input: the
//! entity as JSON, a NUL, the payload, a NUL, a JSON object of properties a table writer sets
//! afterwards (`Body.<field>` for a field of the stored body; `null` removes). A `Body` holding a
//! JSON object with `"s": "seal"` is written through the real store with the payload sealed. A drain
//! delivers only what the broker sealed, unchanged in what the seal binds; it removes a due row it
//! cannot use; one row never stops the drain (a well-formed entry beside it is delivered).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| oauth_broker_fuzz::outbox_row(data));
