//! What a server checks of a request header before it reads the payload or runs the opcode.
//! Owns: the version and length rules of the framing. Never: what an opcode means.

use crate::{flags, opcode, Header, SdResult};

/// Largest read buffer a request may ask for (READ_VDIS is 2 MiB, the inode 12.5 MiB).
pub const MAX_READ: u32 = 32 << 20;

/// Why a header is refused before its opcode runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// The result code to answer with.
    pub result: SdResult,
    /// The stream cannot be resynchronised (a payload too large to skip follows): close it.
    pub close: bool,
}

/// Checks a request header: protocol version of its opcode class, payload and read sizes.
pub fn check_request(h: &Header) -> Result<(), Refusal> {
    let op = h.opcode();
    let ver_ok = if opcode::is_internal(op) {
        h.proto_ver() == crate::SD_SHEEP_PROTO_VER
    } else {
        h.proto_ver() <= crate::SD_PROTO_VER
    };
    if h.carries_payload() && h.data_length() > crate::SD_MAX_PAYLOAD {
        return Err(Refusal {
            result: SdResult::INVALID_PARMS,
            close: true,
        });
    }
    if !ver_ok {
        return Err(Refusal {
            result: SdResult::VER_MISMATCH,
            close: false,
        });
    }
    if !h.has_flag(flags::CMD_WRITE) && h.data_length() > MAX_READ {
        return Err(Refusal {
            result: SdResult::INVALID_PARMS,
            close: false,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_lengths() {
        let mut h = Header::request(opcode::READ_OBJ);
        h.set_data_length(4 << 20);
        assert_eq!(check_request(&h), Ok(()));
        h.set_data_length(MAX_READ + 1);
        assert_eq!(check_request(&h).map_err(|r| r.close), Err(false));
        let mut w = Header::request(opcode::WRITE_OBJ);
        w.set_flags(flags::CMD_WRITE);
        w.set_data_length(crate::SD_MAX_PAYLOAD + 1);
        assert_eq!(check_request(&w).map_err(|r| r.close), Err(true));
        let mut i = Header::request(opcode::GET_NODE_LIST);
        i.set_proto_ver(crate::SD_PROTO_VER);
        assert_eq!(
            check_request(&i).map_err(|r| r.result),
            Err(SdResult::VER_MISMATCH)
        );
    }
}
