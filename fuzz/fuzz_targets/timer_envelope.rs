//! The Functions host's invocation envelope POSTed to the timer function.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| oauth_broker_fuzz::timer_envelope(data));
