//! Every decoder of request payloads and peer replies.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| proto::fuzz::payloads(data));
