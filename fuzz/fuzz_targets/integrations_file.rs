//! The integrations file (and the vendor templates and %NAME% settings it pulls in).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| oauth_broker_fuzz::integrations_file(data));
