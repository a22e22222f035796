//! VDI attributes (GET_VDI_ATTR, `dog vdi setattr/getattr`): one attribute object per key, at
//! `vid<<32 | VDI_ATTR_BIT | attr_id` where vid is the hash of the VDI's name (stable across
//! snapshots) and attr_id the FNV-1a of name, tag, snapshot id and key, probed linearly as
//! the original does. Object layout (`struct sheepdog_vdi_attr`, 66320 bytes): name[256],
//! tag[256], ctime u64, snap_id u32, value_len u32, key[256], value[65536].
//! Owns: attribute lookup, creation and deletion. Never: placement (through the gateway).

use crate::gateway;
use crate::node::Node;
use crate::vdi;
use bytes::Bytes;
use proto::hash::{fnv64a, sd_hash_vdi, FNV1A_64_INIT};
use proto::{Oid, SdResult, Vid};
use std::sync::Arc;

use proto::attr::{CTIME, KEY, KEY_LEN, NAME, SNAP_ID, TAG, VALUE as HEADER};

/// What the request asks: find, create (or overwrite), create only if absent, delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mode {
    pub create: bool,
    pub exclusive: bool,
    pub delete: bool,
}

/// (vid the attribute lives under, attribute id) on success.
pub type Found = (u32, u32);

fn field(b: &[u8], off: usize, len: usize) -> &[u8] {
    proto::cstr_bytes(&b[off..off + len])
}

fn attr_id(a: &[u8]) -> u32 {
    let mut h = fnv64a(&a[NAME..NAME + 256], FNV1A_64_INIT);
    h = fnv64a(&a[TAG..TAG + 256], h);
    h = fnv64a(&a[SNAP_ID..SNAP_ID + 4], h);
    h = fnv64a(&a[KEY..KEY + KEY_LEN], h);
    h as u32
}

/// Same attribute: name, tag, snapshot id and key match.
fn same(a: &[u8], b: &[u8]) -> bool {
    field(a, NAME, 256) == field(b, NAME, 256)
        && field(a, TAG, 256) == field(b, TAG, 256)
        && a[SNAP_ID..SNAP_ID + 4] == b[SNAP_ID..SNAP_ID + 4]
        && field(a, KEY, KEY_LEN) == field(b, KEY, KEY_LEN)
}

/// GET_VDI_ATTR: `data` is the request's `sheepdog_vdi_attr` (header at least).
pub async fn get(
    node: &Arc<Node>,
    snapid: u32,
    data: &[u8],
    mode: Mode,
) -> Result<Found, (SdResult, u32)> {
    if data.len() < HEADER || data.len() as u64 > proto::SD_ATTR_OBJ_SIZE {
        return Err((SdResult::INVALID_PARMS, 0));
    }
    let name = field(data, NAME, 256).to_vec();
    let tag = field(data, TAG, 256).to_vec();
    if name.is_empty() || field(data, KEY, KEY_LEN).is_empty() {
        return Err((SdResult::INVALID_PARMS, 0));
    }
    let view = node.gate(false).map_err(|e| (e, 0))?;
    let h = vdi::find(node, &view, &name, &tag, snapid)
        .await
        .map_err(|e| (e, 0))?;
    let vid = sd_hash_vdi(&name);
    let mut attr = data.to_vec();
    attr[CTIME..CTIME + 8].copy_from_slice(&h.create_time.to_le_bytes());
    let copies = h.nr_copies;
    let start = attr_id(&attr);
    let end = start.wrapping_sub(1);
    let mut id = start;
    while id != end {
        let oid = Oid::attr(Vid(vid), id);
        match gateway::read(node, oid, 0, HEADER, copies).await {
            Err(SdResult::NO_OBJ) if mode.create && !mode.delete => {
                gateway::write(node, oid, 0, Bytes::from(attr), true, copies)
                    .await
                    .map_err(|_| (SdResult::EIO, id))?;
                return Ok((vid, id));
            }
            Err(e) => return Err((e, id)),
            Ok(cur) if same(&cur, &attr) => {
                if mode.exclusive {
                    return Err((SdResult::VDI_EXIST, id));
                }
                if mode.delete {
                    // As the original: the slot stays taken, its name no longer matches.
                    gateway::write(
                        node,
                        oid,
                        NAME as u64,
                        Bytes::from_static(&[0]),
                        false,
                        copies,
                    )
                    .await
                    .map_err(|_| (SdResult::EIO, id))?;
                } else if mode.create {
                    let mut full = attr.clone();
                    full.resize(proto::SD_ATTR_OBJ_SIZE as usize, 0);
                    gateway::write(node, oid, 0, Bytes::from(full), false, copies)
                        .await
                        .map_err(|_| (SdResult::EIO, id))?;
                }
                return Ok((vid, id));
            }
            Ok(_) => id = id.wrapping_add(1),
        }
    }
    Err((SdResult::FULL_VDI, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(name: &str, key: &str) -> Vec<u8> {
        let mut a = vec![0u8; HEADER];
        a[NAME..NAME + name.len()].copy_from_slice(name.as_bytes());
        a[KEY..KEY + key.len()].copy_from_slice(key.as_bytes());
        a
    }

    #[test]
    fn ids_depend_on_name_key_and_snapshot_not_ctime() {
        let a = attr("Alice", "owner");
        let mut b = a.clone();
        b[CTIME] = 9;
        assert_eq!(attr_id(&a), attr_id(&b));
        assert!(same(&a, &b));
        assert_ne!(attr_id(&a), attr_id(&attr("Alice", "other")));
        let mut s = a.clone();
        s[SNAP_ID] = 1;
        assert_ne!(attr_id(&a), attr_id(&s));
        assert!(!same(&a, &s));
    }
}
