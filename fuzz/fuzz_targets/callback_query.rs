//! The vendor's redirect to /api/auth/callback: its query string, and the page shown for an error.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| oauth_broker_fuzz::callback_query(data));
