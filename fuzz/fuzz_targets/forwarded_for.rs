//! `X-Forwarded-For`, `client-ip` and the trusted-proxy rule (`SourceRule::client_from`). Input: a
//! flags byte (bit 0: under the Functions host; bits 1-2: no peer, an IPv4 peer, an IPv6 peer, an
//! IPv4-mapped IPv6 peer, from the next 4 or 16 bytes; bit 3: a `client-ip` header), then text: the
//! trusted blocks (whitespace-separated) on the first line, the `client-ip` value on the next when
//! bit 3 is set, one X-Forwarded-For header value per further line.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| oauth_broker_fuzz::forwarded_for(data));
