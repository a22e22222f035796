//! Bytes on the Sheepdog port, framed and checked as the server does.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| proto::fuzz::request_stream(data));
