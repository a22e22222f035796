//! The 48-byte request/response header (`struct sd_req` / `struct sd_rsp`).
//!
//! One type serves both directions: the first 16 bytes are common, bytes 16..48 are a union
//! whose views are the named accessors below (offsets as in spec section 1.2 / 1.3).
//! Decoding never fails: any 48 bytes are a header; validity is the server's business.

use crate::le::*;

pub const HEADER_SIZE: usize = 48;

#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Header(pub [u8; HEADER_SIZE]);

impl Default for Header {
    fn default() -> Self {
        Header([0u8; HEADER_SIZE])
    }
}

impl std::fmt::Debug for Header {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Header{{ver {:#x} op {:#x} flags {:#x} epoch {} id {} len {} args {:02x?}}}",
            self.proto_ver(),
            self.opcode(),
            self.flags(),
            self.epoch(),
            self.id(),
            self.data_length(),
            &self.0[16..]
        )
    }
}

macro_rules! field {
    ($get:ident, $set:ident, u8, $off:expr) => {
        pub fn $get(&self) -> u8 {
            self.0[$off]
        }
        pub fn $set(&mut self, v: u8) -> &mut Self {
            self.0[$off] = v;
            self
        }
    };
    ($get:ident, $set:ident, u16, $off:expr) => {
        pub fn $get(&self) -> u16 {
            u16_at(&self.0, $off)
        }
        pub fn $set(&mut self, v: u16) -> &mut Self {
            put_u16(&mut self.0, $off, v);
            self
        }
    };
    ($get:ident, $set:ident, u32, $off:expr) => {
        pub fn $get(&self) -> u32 {
            u32_at(&self.0, $off)
        }
        pub fn $set(&mut self, v: u32) -> &mut Self {
            put_u32(&mut self.0, $off, v);
            self
        }
    };
    ($get:ident, $set:ident, u64, $off:expr) => {
        pub fn $get(&self) -> u64 {
            u64_at(&self.0, $off)
        }
        pub fn $set(&mut self, v: u64) -> &mut Self {
            put_u64(&mut self.0, $off, v);
            self
        }
    };
}

impl Header {
    /// A zeroed header with the version and opcode set.
    pub fn new(proto_ver: u8, opcode: u8) -> Header {
        let mut h = Header::default();
        h.0[0] = proto_ver;
        h.0[1] = opcode;
        h
    }

    /// A request with the version the original uses for this opcode.
    pub fn request(opcode: u8) -> Header {
        let ver = if crate::opcode::is_internal(opcode) {
            crate::SD_SHEEP_PROTO_VER
        } else {
            crate::SD_PROTO_VER
        };
        Header::new(ver, opcode)
    }

    pub fn from_bytes(b: &[u8; HEADER_SIZE]) -> Header {
        Header(*b)
    }

    pub fn as_bytes(&self) -> &[u8; HEADER_SIZE] {
        &self.0
    }

    /// A response to `req`: echoes opcode and id, zero union.
    pub fn response_to(req: &Header, epoch: u32, result: crate::SdResult) -> Header {
        let mut h = Header::new(req.proto_ver(), req.opcode());
        h.set_id(req.id()).set_epoch(epoch).set_result(result.0);
        h
    }

    // Common prefix.
    field!(proto_ver, set_proto_ver, u8, 0);
    field!(opcode, set_opcode, u8, 1);
    field!(flags, set_flags, u16, 2);
    field!(epoch, set_epoch, u32, 4);
    field!(id, set_id, u32, 8);
    field!(data_length, set_data_length, u32, 12);

    pub fn has_flag(&self, f: u16) -> bool {
        self.flags() & f != 0
    }
    pub fn add_flags(&mut self, f: u16) -> &mut Self {
        let v = self.flags() | f;
        self.set_flags(v)
    }
    /// True when a payload of `data_length` bytes follows this request header.
    pub fn carries_payload(&self) -> bool {
        self.has_flag(crate::flags::CMD_WRITE) && self.data_length() > 0
    }

    // Request: obj.
    field!(oid, set_oid, u64, 16);
    field!(cow_oid, set_cow_oid, u64, 24);
    field!(obj_copies, set_obj_copies, u8, 32);
    field!(obj_copy_policy, set_obj_copy_policy, u8, 33);
    field!(ec_index, set_ec_index, u8, 34);
    field!(tgt_epoch, set_tgt_epoch, u32, 36);
    // Offset inside the object. QEMU writes a u64 here; the original reads a u32 with a zero
    // pad after it, so reading 8 bytes is compatible with both.
    field!(obj_offset, set_obj_offset, u64, 40);

    // Request: vdi.
    field!(vdi_size, set_vdi_size, u64, 16);
    field!(base_vdi_id, set_base_vdi_id, u32, 24);
    field!(vdi_copies, set_vdi_copies, u8, 28);
    field!(vdi_copy_policy, set_vdi_copy_policy, u8, 29);
    field!(store_policy, set_store_policy, u8, 30);
    field!(vdi_block_size_shift, set_vdi_block_size_shift, u8, 31);
    field!(snapid, set_snapid, u32, 32);
    field!(lock_type, set_lock_type, u32, 36);

    // Request: cluster (MAKE_FS, ALTER_CLUSTER_COPY).
    field!(cluster_ctime, set_cluster_ctime, u64, 24);
    field!(cluster_copies, set_cluster_copies, u8, 32);
    field!(cluster_copy_policy, set_cluster_copy_policy, u8, 33);
    field!(cluster_flags, set_cluster_flags, u16, 34);
    field!(cluster_tag, set_cluster_tag, u32, 36);
    field!(cluster_nodes_nr, set_cluster_nodes_nr, u32, 40);
    field!(
        cluster_block_size_shift,
        set_cluster_block_size_shift,
        u8,
        44
    );

    // Request: forw (REPAIR_REPLICA): oid at 16 (`oid`), the node to copy from.
    pub fn forw_addr(&self) -> [u8; 16] {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.0[24..40]);
        a
    }
    pub fn set_forw_addr(&mut self, a: &[u8; 16]) -> &mut Self {
        self.0[24..40].copy_from_slice(a);
        self
    }
    field!(forw_port, set_forw_port, u16, 40);

    // Request: vdi_state (NOTIFY_VDI_ADD).
    field!(old_vid, set_old_vid, u32, 16);
    field!(new_vid, set_new_vid, u32, 20);
    field!(vs_copies, set_vs_copies, u8, 24);
    field!(vs_set_bitmap, set_vs_set_bitmap, u8, 25);
    field!(vs_copy_policy, set_vs_copy_policy, u8, 26);
    field!(vs_block_size_shift, set_vs_block_size_shift, u8, 27);

    // Response: common.
    field!(result, set_result, u32, 16);
    pub fn sd_result(&self) -> crate::SdResult {
        crate::SdResult(self.result())
    }

    // Response: obj.
    field!(rsp_obj_copies, set_rsp_obj_copies, u8, 20);
    field!(rsp_obj_offset, set_rsp_obj_offset, u64, 24);
    // Extension of this implementation, in the padding of the original's obj response: the
    // version of the copy (the writes it has taken) after a peer write, or as read.
    field!(rsp_obj_version, set_rsp_obj_version, u64, 32);
    // Extension, with a recovery read: the id of the last write the copy counted.
    field!(rsp_obj_last, set_rsp_obj_last, u64, 40);

    // Response: vdi.
    field!(rsp_vdi_id, set_rsp_vdi_id, u32, 24);
    field!(rsp_attr_id, set_rsp_attr_id, u32, 28);
    field!(rsp_vdi_copies, set_rsp_vdi_copies, u8, 32);
    field!(
        rsp_vdi_block_size_shift,
        set_rsp_vdi_block_size_shift,
        u8,
        33
    );

    // Response: node (STAT_SHEEP, GET_NODE_LIST).
    field!(rsp_nr_nodes, set_rsp_nr_nodes, u32, 20);
    field!(rsp_store_size, set_rsp_store_size, u64, 32);
    field!(rsp_store_free, set_rsp_store_free, u64, 40);

    // Response: cluster default.
    field!(rsp_default_copies, set_rsp_default_copies, u8, 20);
    field!(rsp_default_copy_policy, set_rsp_default_copy_policy, u8, 21);
    field!(
        rsp_default_block_size_shift,
        set_rsp_default_block_size_shift,
        u8,
        22
    );

    /// Response: hash (GET_HASH), 20 bytes of SHA-1 at 24.
    pub fn rsp_digest(&self) -> [u8; 20] {
        let mut d = [0u8; 20];
        d.copy_from_slice(&self.0[24..44]);
        d
    }
    pub fn set_rsp_digest(&mut self, d: &[u8; 20]) -> &mut Self {
        self.0[24..44].copy_from_slice(d);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn offsets_match_the_spec() {
        let mut h = Header::request(crate::opcode::READ_OBJ);
        h.set_id(7)
            .set_data_length(4096)
            .set_oid(0x007c2b2500000003)
            .set_obj_offset(512);
        let b = h.as_bytes();
        assert_eq!(b[0], 0x02);
        assert_eq!(b[1], 0x02);
        assert_eq!(&b[8..12], &7u32.to_le_bytes());
        assert_eq!(&b[12..16], &4096u32.to_le_bytes());
        assert_eq!(&b[16..24], &0x007c2b2500000003u64.to_le_bytes());
        assert_eq!(&b[40..44], &512u32.to_le_bytes());
        let h = Header::request(crate::opcode::MAKE_FS);
        assert_eq!(h.proto_ver(), 0x0a);
    }

    proptest! {
        #[test]
        fn any_bytes_round_trip(bytes in proptest::array::uniform32(any::<u8>()), head in proptest::array::uniform16(any::<u8>())) {
            let mut b = [0u8; 48];
            b[..16].copy_from_slice(&head);
            b[16..].copy_from_slice(&bytes);
            let h = Header::from_bytes(&b);
            let mut r = Header::new(h.proto_ver(), h.opcode());
            r.set_flags(h.flags()).set_epoch(h.epoch()).set_id(h.id()).set_data_length(h.data_length());
            r.set_oid(h.oid()).set_cow_oid(h.cow_oid()).set_obj_copies(h.obj_copies())
                .set_obj_copy_policy(h.obj_copy_policy()).set_ec_index(h.ec_index());
            r.0[35] = h.0[35];
            r.set_tgt_epoch(h.tgt_epoch()).set_obj_offset(h.obj_offset());
            prop_assert_eq!(r, h);
        }
    }
}
