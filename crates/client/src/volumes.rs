//! The requests that create, find, snapshot, clone, resize and delete VDIs, as the original's
//! `dog` sends them: one implementation shared by our `dog` and the sheep's HTTP volume API,
//! so that a VDI made through either is made by the same cluster operation.
//! Owns: building those requests and reading their answers. Never: wording for users (dog
//! and the API each say it their way), retries, printing.

use crate::{ClientError, Connection};
use proto::inode::{InodeHeader, SD_INODE_HEADER_SIZE};
use proto::{flags, opcode, Header, Oid, SdResult, Vid};

/// Offset of the tag in the inode.
const INODE_TAG: u64 = 256;

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The sheep answered `result` to the request of `step`.
    #[error("{step}: {}", result.text())]
    Refused { step: Step, result: SdResult },
    #[error("{what} is too long: {len} bytes (at most {max})")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("the inode of VDI {0:x} is short")]
    ShortInode(u32),
}

impl VolumeError {
    /// The sheep's result code, when it was the sheep that refused.
    pub fn result(&self) -> Option<SdResult> {
        match self {
            VolumeError::Refused { result, .. } => Some(*result),
            _ => None,
        }
    }
}

/// Which request of a sequence was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Find,
    ReadInode,
    WriteTag,
    NewVdi,
    WriteHeader,
    Delete,
    Stat,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Step::Find => "looking up the VDI",
            Step::ReadInode => "reading the inode",
            Step::WriteTag => "writing the snapshot tag",
            Step::NewVdi => "creating the VDI",
            Step::WriteHeader => "updating the inode header",
            Step::Delete => "deleting the VDI",
            Step::Stat => "asking the node",
        })
    }
}

/// What NEW_VDI makes: a working VDI (`snapshot` false) or a snapshot of `base`.
#[derive(Debug, Clone, Default)]
pub struct NewVdi {
    pub name: String,
    pub size: u64,
    /// 0 for a new VDI; the VDI whose objects the new one starts from otherwise.
    pub base: u32,
    pub snapshot: bool,
    /// 0: the cluster's default.
    pub copies: u8,
    pub copy_policy: u8,
    pub store_policy: u8,
    /// 0: the cluster's default.
    pub block_size_shift: u8,
}

fn padded(s: &str, len: usize, what: &'static str) -> Result<Vec<u8>, VolumeError> {
    proto::padded(s.as_bytes(), len).ok_or(VolumeError::TooLong {
        what,
        len: s.len(),
        max: len - 1,
    })
}

/// The 256-byte name payload of NEW_VDI.
pub fn name_payload(name: &str) -> Result<Vec<u8>, VolumeError> {
    padded(name, proto::SD_MAX_VDI_LEN, "VDI name")
}

/// The 512-byte name + tag payload of GET_VDI_INFO and DEL_VDI.
pub fn name_tag_payload(name: &str, tag: &str) -> Result<Vec<u8>, VolumeError> {
    let mut p = name_payload(name)?;
    p.extend(padded(tag, proto::SD_MAX_VDI_TAG_LEN, "Snapshot tag")?);
    Ok(p)
}

fn refused(step: Step, result: SdResult) -> Result<(), VolumeError> {
    match result {
        SdResult::SUCCESS => Ok(()),
        result => Err(VolumeError::Refused { step, result }),
    }
}

/// GET_VDI_INFO: the id of `name` (snapshot `snapid` or `tag`, or the working VDI).
pub async fn find(c: &Connection, name: &str, snapid: u32, tag: &str) -> Result<u32, VolumeError> {
    let mut h = Header::request(opcode::GET_VDI_INFO);
    h.set_snapid(snapid);
    let r = c.write(h, name_tag_payload(name, tag)?.into()).await?;
    refused(Step::Find, r.result())?;
    Ok(r.header.rsp_vdi_id())
}

/// The inode header of VDI `vid`, read from its copies directly.
pub async fn read_header(c: &Connection, vid: u32) -> Result<InodeHeader, VolumeError> {
    let mut h = Header::request(opcode::READ_OBJ);
    h.set_oid(Oid::inode(Vid(vid)).0)
        .set_obj_offset(0)
        .add_flags(flags::CMD_DIRECT);
    let r = c.read(h, SD_INODE_HEADER_SIZE as u32).await?;
    refused(Step::ReadInode, r.result())?;
    InodeHeader::decode(&r.data).ok_or(VolumeError::ShortInode(vid))
}

/// NEW_VDI; the id of the VDI made.
pub async fn new_vdi(c: &Connection, v: &NewVdi) -> Result<u32, VolumeError> {
    let mut h = Header::request(opcode::NEW_VDI);
    h.set_vdi_size(v.size)
        .set_base_vdi_id(v.base)
        .set_snapid(v.snapshot as u32)
        .set_vdi_copies(v.copies)
        .set_vdi_copy_policy(v.copy_policy)
        .set_store_policy(v.store_policy)
        .set_vdi_block_size_shift(v.block_size_shift);
    let r = c.write(h, name_payload(&v.name)?.into()).await?;
    refused(Step::NewVdi, r.result())?;
    Ok(r.header.rsp_vdi_id())
}

/// NEW_VDI for a VDI (or snapshot, `snapshot`) starting from `base`'s objects and shape.
pub async fn new_from(
    c: &Connection,
    name: &str,
    base: &InodeHeader,
    snapshot: bool,
    copies: Option<u8>,
) -> Result<u32, VolumeError> {
    let v = NewVdi {
        name: name.to_string(),
        size: base.vdi_size,
        base: base.vdi_id,
        snapshot,
        copies: copies.unwrap_or(base.nr_copies),
        copy_policy: base.copy_policy,
        store_policy: base.store_policy,
        block_size_shift: base.block_size_shift,
    };
    new_vdi(c, &v).await
}

/// Writes `tag` into the inode of the working VDI `base` (the tag its snapshot will carry).
pub async fn write_tag(c: &Connection, base: &InodeHeader, tag: &str) -> Result<(), VolumeError> {
    let field = padded(tag, proto::SD_MAX_VDI_TAG_LEN, "Snapshot tag")?;
    let mut h = Header::request(opcode::WRITE_OBJ);
    h.set_oid(Oid::inode(Vid(base.vdi_id)).0)
        .set_obj_offset(INODE_TAG)
        .set_obj_copies(base.nr_copies);
    let r = c.write(h, field.into()).await?;
    refused(Step::WriteTag, r.result())
}

/// Snapshots the working VDI `base` as `tag` (may be empty); the id of the working VDI that
/// follows (the snapshot keeps `base`'s id).
pub async fn snapshot(c: &Connection, base: &InodeHeader, tag: &str) -> Result<u32, VolumeError> {
    write_tag(c, base, tag).await?;
    new_from(c, &String::from_utf8_lossy(&base.name), base, true, None).await
}

/// `data_vdi_id[0 .. n]` of VDI `vid`: the owner of each of its first `n` data objects.
pub async fn read_table(c: &Connection, vid: u32, n: u64) -> Result<Vec<u32>, VolumeError> {
    let n = n.min(proto::SD_INODE_DATA_INDEX);
    if n == 0 {
        return Ok(Vec::new());
    }
    let mut h = Header::request(opcode::READ_OBJ);
    h.set_oid(Oid::inode(Vid(vid)).0)
        .set_obj_offset(SD_INODE_HEADER_SIZE as u64)
        .add_flags(flags::CMD_DIRECT);
    let r = c.read(h, (n * 4) as u32).await?;
    refused(Step::ReadInode, r.result())?;
    Ok(r.data
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// Rewrites the inode header of `h.vdi_id` (resize).
pub async fn write_header(c: &Connection, h: &InodeHeader) -> Result<(), VolumeError> {
    write_header_at(c, h, h.nr_copies).await
}

/// Rewrites the inode header of `h.vdi_id` on the `copies` copies it has now (alter-copy:
/// the header says the new number before the objects move).
pub async fn write_header_at(
    c: &Connection,
    h: &InodeHeader,
    copies: u8,
) -> Result<(), VolumeError> {
    let mut head = vec![0u8; SD_INODE_HEADER_SIZE];
    h.encode_into(&mut head);
    let mut req = Header::request(opcode::WRITE_OBJ);
    req.set_oid(Oid::inode(Vid(h.vdi_id)).0)
        .set_obj_copies(copies);
    let r = c.write(req, head.into()).await?;
    refused(Step::WriteHeader, r.result())
}

/// DEL_VDI of `name` (snapshot `snapid` or `tag`, or the working VDI).
pub async fn delete(c: &Connection, name: &str, snapid: u32, tag: &str) -> Result<(), VolumeError> {
    let mut h = Header::request(opcode::DEL_VDI);
    h.set_snapid(snapid);
    let r = c.write(h, name_tag_payload(name, tag)?.into()).await?;
    refused(Step::Delete, r.result())
}
