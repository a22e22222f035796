//! What a server checks of a request header before it reads the payload or runs the opcode.
//! Owns: the version and length rules of the framing, and the largest payload each opcode
//! takes. Never: what an opcode means.

use crate::{flags, opcode, Header, SdResult};

/// Largest read buffer a request may ask for (READ_VDIS is 2 MiB, the inode 12.5 MiB).
pub const MAX_READ: u32 = 32 << 20;

/// Largest payload that is read and thrown away after a refusal, so that the connection goes
/// on; a refused request with a larger payload closes the connection instead.
pub const MAX_SKIP: u32 = 64 << 10;

/// A VDI name and a snapshot tag (NEW_VDI, GET_VDI_INFO, LOCK_VDI, DEL_VDI).
const NAME_TAG: u32 = (crate::SD_MAX_VDI_LEN + crate::SD_MAX_VDI_TAG_LEN) as u32;
/// A store driver's name (MAKE_FS), with room to spare.
const SMALL: u32 = 4096;

/// The largest payload `op` takes (the original's sizes, spec/sheepdog.md section 1.6); 0 for
/// every opcode that takes none, and for unknown ones.
pub fn max_payload(op: u8) -> u32 {
    match op {
        // A whole object of the largest object size.
        opcode::CREATE_AND_WRITE_OBJ
        | opcode::WRITE_OBJ
        | opcode::CREATE_AND_WRITE_PEER
        | opcode::WRITE_PEER => crate::SD_MAX_PAYLOAD,
        opcode::NEW_VDI | opcode::GET_VDI_INFO | opcode::LOCK_VDI | opcode::DEL_VDI => NAME_TAG,
        // `struct sheepdog_vdi_attr`: name, tag, ctime, snap id, value length, key, value.
        opcode::GET_VDI_ATTR => crate::SD_ATTR_OBJ_SIZE as u32,
        // The store driver's name; a comma-separated list of disks.
        opcode::MAKE_FS | opcode::MD_PLUG | opcode::MD_UNPLUG => SMALL,
        // `struct recovery_throttling` (24 bytes).
        opcode::SET_RECOVERY => 24,
        // An i32 log level; an i32 number of vnodes.
        opcode::SET_LOGLEVEL | opcode::SET_VNODES => 4,
        // A list of object ids.
        opcode::OIDS_EXIST => MAX_READ,
        // Two `vdi_lock` records: the holder and the new writer.
        opcode::NBD_HANDOVER => 2 * crate::vdi_lock::LOCK_RECORD_SIZE as u32,
        _ => 0,
    }
}

/// Why a header is refused before its opcode runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// The result code to answer with.
    pub result: SdResult,
    /// The stream cannot be resynchronised cheaply (a payload too large to skip follows):
    /// answer, then close. Nothing of the payload is read.
    pub close: bool,
    /// When not closing: payload bytes that follow the header and must be read and thrown
    /// away before the next header (never buffered, never parsed as a header).
    pub skip: u32,
}

impl Refusal {
    /// Refuses `h` with `result`: its payload, if any, is skipped when it is at most `limit`
    /// bytes, else the connection is closed.
    fn new(h: &Header, result: SdResult, limit: u32) -> Refusal {
        let payload = if h.carries_payload() {
            h.data_length()
        } else {
            0
        };
        if payload > limit {
            Refusal {
                result,
                close: true,
                skip: 0,
            }
        } else {
            Refusal {
                result,
                close: false,
                skip: payload,
            }
        }
    }
}

/// Checks a request header: protocol version of its opcode class, the payload it claims
/// (against the largest its opcode takes) and the read buffer it asks for. Everything here
/// is decided from the 48 header bytes, before any payload is read.
pub fn check_request(h: &Header) -> Result<(), Refusal> {
    let op = h.opcode();
    let ver_ok = if opcode::is_internal(op) {
        h.proto_ver() == crate::SD_SHEEP_PROTO_VER
    } else {
        h.proto_ver() <= crate::SD_PROTO_VER
    };
    if h.carries_payload() && h.data_length() > crate::SD_MAX_PAYLOAD {
        return Err(Refusal::new(h, SdResult::INVALID_PARMS, 0));
    }
    let max = max_payload(op);
    if !ver_ok {
        // A request of another version still has the framing of this one: its payload
        // follows, and is skipped when it is of a size its opcode could take.
        return Err(Refusal::new(h, SdResult::VER_MISMATCH, max.max(MAX_SKIP)));
    }
    if h.carries_payload() && h.data_length() > max {
        return Err(Refusal::new(h, SdResult::INVALID_PARMS, MAX_SKIP));
    }
    if !h.has_flag(flags::CMD_WRITE) && h.data_length() > MAX_READ {
        return Err(Refusal::new(h, SdResult::INVALID_PARMS, 0));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(op: u8, len: u32) -> Header {
        let mut h = Header::request(op);
        h.set_flags(flags::CMD_WRITE).set_data_length(len);
        h
    }

    #[test]
    fn versions_and_lengths() {
        let mut h = Header::request(opcode::READ_OBJ);
        h.set_data_length(4 << 20);
        assert_eq!(check_request(&h), Ok(()));
        h.set_data_length(MAX_READ + 1);
        assert_eq!(check_request(&h).map_err(|r| r.close), Err(false));
        let w = write(opcode::WRITE_OBJ, crate::SD_MAX_PAYLOAD + 1);
        assert_eq!(check_request(&w).map_err(|r| r.close), Err(true));
        let mut i = Header::request(opcode::GET_NODE_LIST);
        i.set_proto_ver(crate::SD_PROTO_VER);
        assert_eq!(
            check_request(&i).map_err(|r| r.result),
            Err(SdResult::VER_MISMATCH)
        );
    }

    #[test]
    fn payload_per_opcode() {
        // What the original's clients send.
        assert_eq!(check_request(&write(opcode::WRITE_OBJ, 4 << 20)), Ok(()));
        assert_eq!(
            check_request(&write(opcode::CREATE_AND_WRITE_OBJ, crate::SD_MAX_PAYLOAD)),
            Ok(())
        );
        assert_eq!(check_request(&write(opcode::NEW_VDI, 256)), Ok(()));
        assert_eq!(check_request(&write(opcode::GET_VDI_INFO, 512)), Ok(()));
        assert_eq!(check_request(&write(opcode::DEL_VDI, 512)), Ok(()));
        assert_eq!(
            check_request(&write(opcode::GET_VDI_ATTR, crate::SD_ATTR_OBJ_SIZE as u32)),
            Ok(())
        );
        assert_eq!(check_request(&write(opcode::MAKE_FS, 6)), Ok(()));
        assert_eq!(check_request(&write(opcode::SET_RECOVERY, 24)), Ok(()));
        // A write flag with no payload is no payload.
        assert_eq!(check_request(&write(opcode::RELEASE_VDI, 0)), Ok(()));
        // A small payload where none is taken: refused, skipped.
        let r = check_request(&write(opcode::GET_NODE_LIST, 100)).unwrap_err();
        assert_eq!(
            (r.result, r.close, r.skip),
            (SdResult::INVALID_PARMS, false, 100)
        );
        // A huge one: refused, closed, nothing read.
        let r = check_request(&write(opcode::GET_NODE_LIST, 1 << 31)).unwrap_err();
        assert_eq!(
            (r.result, r.close, r.skip),
            (SdResult::INVALID_PARMS, true, 0)
        );
        let r = check_request(&write(opcode::NEW_VDI, 4 << 20)).unwrap_err();
        assert_eq!((r.result, r.close), (SdResult::INVALID_PARMS, true));
        // A read asks for a buffer; it sends nothing.
        let mut rd = Header::request(opcode::READ_VDIS);
        rd.set_data_length(2 << 20);
        assert_eq!(check_request(&rd), Ok(()));
    }

    #[test]
    fn version_mismatch_payload_is_skipped() {
        let mut h = write(opcode::WRITE_OBJ, 4096);
        h.set_proto_ver(crate::SD_PROTO_VER + 1);
        let r = check_request(&h).unwrap_err();
        assert_eq!(
            (r.result, r.close, r.skip),
            (SdResult::VER_MISMATCH, false, 4096)
        );
        let mut h = write(opcode::GET_NODE_LIST, 48);
        h.set_proto_ver(0x09);
        let r = check_request(&h).unwrap_err();
        assert_eq!(
            (r.result, r.close, r.skip),
            (SdResult::VER_MISMATCH, false, 48)
        );
        let mut h = write(opcode::GET_NODE_LIST, 1 << 30);
        h.set_proto_ver(0x09);
        let r = check_request(&h).unwrap_err();
        assert_eq!((r.result, r.close), (SdResult::VER_MISMATCH, true));
        // Without a payload nothing is skipped.
        let mut h = Header::request(opcode::READ_OBJ);
        h.set_proto_ver(7).set_data_length(4096);
        let r = check_request(&h).unwrap_err();
        assert_eq!((r.close, r.skip), (false, 0));
    }
}
