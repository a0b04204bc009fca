//! The proxy's pagination link rewriter (a JSON body, also read as a Link header).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| oauth_broker_fuzz::link_rewriter(data));
