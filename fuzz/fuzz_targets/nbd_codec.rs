//! NBD option payloads and transmission requests.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| proto::fuzz::nbd_codec(data));
