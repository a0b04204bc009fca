//! A consent link's token as GET /api/auth/link?t= receives it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| oauth_broker_fuzz::consent_link(data));
