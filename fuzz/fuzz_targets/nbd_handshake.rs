//! Everything a client may send during the NBD handshake, through the real negotiation.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| sheep::nbd::handshake::fuzz_negotiate(data));
