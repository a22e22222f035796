//! Bodies of the fuzz targets in `fuzz/`: every decoder of bytes that arrive from the network,
//! driven the way a server drives it. The test suite also runs them on random input, so they
//! stay built and panic-free on stable. Owns: nothing but these drivers. Never: I/O.

use crate::{config::Config, frame, inode::InodeHeader, node, EpochLog, Header, SdNode};

/// A byte stream split into requests as a server reads it: 48-byte header, checks, payload.
pub fn request_stream(mut data: &[u8]) {
    while data.len() >= crate::HEADER_SIZE {
        let (hb, rest) = data.split_at(crate::HEADER_SIZE);
        let mut a = [0u8; crate::HEADER_SIZE];
        a.copy_from_slice(hb);
        let h = Header::from_bytes(&a);
        data = rest;
        let _ = (
            h.oid(),
            h.obj_offset(),
            h.vdi_size(),
            h.snapid(),
            h.cluster_nodes_nr(),
        );
        let rsp = Header::response_to(&h, 1, crate::SdResult(h.flags() as u32));
        assert_eq!(rsp.id(), h.id());
        match frame::check_request(&h) {
            Err(r) if r.close => return,
            // The refused request's payload is skipped, never read as the next header.
            Err(r) => {
                let n = r.skip as usize;
                if data.len() < n {
                    return;
                }
                data = &data[n..];
                continue;
            }
            Ok(()) => {}
        }
        if h.carries_payload() {
            let n = h.data_length() as usize;
            if data.len() < n {
                return;
            }
            payloads(&data[..n]);
            data = &data[n..];
        }
    }
}

/// Every payload and reply decoder on the same bytes.
pub fn payloads(data: &[u8]) {
    let _ = SdNode::decode(data);
    let _ = SdNode::decode_list(data);
    for slots in [0usize, 1, 3, 16] {
        let _ = EpochLog::decode_all(data, slots);
    }
    let _ = node::decode_epoch_file(data);
    let _ = InodeHeader::decode(data);
    let _ = Config::decode(data);
    let _ = crate::vdi_lock::LockRecord::decode_list(data);
    let _ = crate::objlist::decode(data);
    let _ = crate::cstr_bytes(data);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = crate::Oid::parse_file_name(s);
    }
}

/// NBD option payloads and transmission requests.
pub fn nbd_codec(data: &[u8]) {
    use crate::nbd;
    let _ = nbd::InfoRequest::decode(data);
    let _ = nbd::MetaContextRequest::decode(data);
    if data.len() >= nbd::OPTION_HEADER_SIZE {
        let mut a = [0u8; nbd::OPTION_HEADER_SIZE];
        a.copy_from_slice(&data[..nbd::OPTION_HEADER_SIZE]);
        let _ = nbd::OptionHeader::decode(&a);
    }
    for c in data.chunks_exact(nbd::REQUEST_SIZE) {
        let mut a = [0u8; nbd::REQUEST_SIZE];
        a.copy_from_slice(c);
        if let Some(r) = nbd::Request::decode(&a) {
            assert_eq!(nbd::Request::decode(&r.encode()), Some(r));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]
        #[test]
        fn random_streams(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            request_stream(&data);
            payloads(&data);
            nbd_codec(&data);
        }

        #[test]
        fn well_framed_writes(body in proptest::collection::vec(any::<u8>(), 0..300), op in any::<u8>()) {
            let mut h = Header::request(op);
            h.set_flags(crate::flags::CMD_WRITE).set_data_length(body.len() as u32);
            let mut s = h.as_bytes().to_vec();
            s.extend_from_slice(&body);
            s.extend_from_slice(h.as_bytes());
            request_stream(&s);
        }
    }
}
