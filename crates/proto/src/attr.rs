//! `struct sheepdog_vdi_attr`, the attribute object (66320 bytes): name[256], tag[256],
//! ctime u64, snap_id u32, value_len u32, key[256], value[65536]. Owns: those offsets.

pub const NAME: usize = 0;
pub const TAG: usize = 256;
pub const CTIME: usize = 512;
pub const SNAP_ID: usize = 520;
pub const VALUE_LEN: usize = 524;
pub const KEY: usize = 528;
pub const KEY_LEN: usize = 256;
/// Where the value starts: everything before it is the header.
pub const VALUE: usize = 784;
pub const MAX_VALUE: usize = 65536;

const _: () = assert!(VALUE + MAX_VALUE == crate::SD_ATTR_OBJ_SIZE as usize);
