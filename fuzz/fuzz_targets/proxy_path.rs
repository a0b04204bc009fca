//! The proxy's path check and upstream URL (a raw path, then ?query).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| oauth_broker_fuzz::proxy_path(data));
