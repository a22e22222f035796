//! Protocol constants of the original (sheepdog_proto.h, internal_proto.h).

/// Public protocol version (opcodes < 0x80). Requests may carry 0, 1 or 2.
pub const SD_PROTO_VER: u8 = 0x02;
/// Internal protocol version (opcodes >= 0x80): must match exactly.
pub const SD_SHEEP_PROTO_VER: u8 = 0x0a;
pub const SD_DEFAULT_PORT: u16 = 7000;
pub const SD_DEFAULT_COPIES: u8 = 3;
pub const SD_MAX_COPIES: u8 = 31;
pub const SD_DEFAULT_VNODES: u16 = 128;
pub const SD_DEFAULT_BLOCK_SIZE_SHIFT: u8 = 22;
pub const SD_MIN_BLOCK_SIZE_SHIFT: u8 = 20;
pub const SD_MAX_BLOCK_SIZE_SHIFT: u8 = 31;
/// Default data object size (4 MiB).
pub const SD_DATA_OBJ_SIZE: u64 = 1 << SD_DEFAULT_BLOCK_SIZE_SHIFT;
/// Entries in an inode's data_vdi_id table.
pub const SD_INODE_DATA_INDEX: u64 = 1 << 20;
pub const SD_NR_VDIS: u32 = 1 << 24;
/// Bytes of the in-use / deleted VDI bitmaps (2^24 bits).
pub const SD_VDI_BITMAP_SIZE: usize = (SD_NR_VDIS / 8) as usize;
pub const SD_MAX_VDI_LEN: usize = 256;
pub const SD_MAX_VDI_TAG_LEN: usize = 256;
pub const SD_MAX_VDI_ATTR_KEY_LEN: usize = 256;
pub const SD_MAX_VDI_ATTR_VALUE_LEN: usize = 65536;
pub const SD_ATTR_OBJ_SIZE: u64 = 256 + 256 + 8 + 4 + 4 + 256 + 65536;
pub const STORE_LEN: usize = 16;
pub const SD_MAX_NODES: usize = 6144;
/// Largest payload a request may carry: a whole object of the largest object size (a VDI
/// may be created with any block_size_shift up to the maximum, and QEMU writes whole objects).
pub const SD_MAX_PAYLOAD: u32 = 1 << SD_MAX_BLOCK_SIZE_SHIFT;

pub mod flags {
    pub const CMD_WRITE: u16 = 0x01;
    pub const CMD_COW: u16 = 0x02;
    pub const CMD_CACHE: u16 = 0x04;
    pub const CMD_DIRECT: u16 = 0x08;
    pub const CMD_PIGGYBACK: u16 = 0x10;
    pub const CMD_TGT: u16 = 0x20;
    pub const CMD_FWD: u16 = 0x40;
    pub const CMD_RECOVERY: u16 = 0x80;
    pub const CMD_WILDCARD: u16 = 0x100;
    pub const CMD_CREAT: u16 = 0x100;
    pub const CMD_EXCL: u16 = 0x200;
    pub const CMD_DEL: u16 = 0x400;
}

/// Cluster flags (format options), stored in the config file and cluster_info.
pub mod cluster_flags {
    pub const STRICT: u16 = 0x1;
    pub const DISKMODE: u16 = 0x2;
    pub const AUTO_VNODES: u16 = 0x4;
    pub const USE_LOCK: u16 = 0x8;
    pub const RECYCLE_VID: u16 = 0x10;
    pub const AVOID_DISKFULL: u16 = 0x20;
}

/// Cluster status values (enum sd_status).
pub mod status {
    pub const OK: u8 = 1;
    pub const WAIT: u8 = 2;
    pub const SHUTDOWN: u8 = 3;
    pub const KILLED: u8 = 4;
}
