//! Opcodes of the original protocol (public < 0x80, internal >= 0x80).

pub const CREATE_AND_WRITE_OBJ: u8 = 0x01;
pub const READ_OBJ: u8 = 0x02;
pub const WRITE_OBJ: u8 = 0x03;
pub const REMOVE_OBJ: u8 = 0x04;
pub const DISCARD_OBJ: u8 = 0x05;
pub const NEW_VDI: u8 = 0x11;
pub const LOCK_VDI: u8 = 0x12;
pub const RELEASE_VDI: u8 = 0x13;
pub const GET_VDI_INFO: u8 = 0x14;
pub const READ_VDIS: u8 = 0x15;
pub const FLUSH_VDI: u8 = 0x16;
pub const DEL_VDI: u8 = 0x17;
pub const GET_CLUSTER_DEFAULT: u8 = 0x18;

pub const GET_NODE_LIST: u8 = 0x82;
pub const MAKE_FS: u8 = 0x84;
pub const SHUTDOWN: u8 = 0x85;
pub const STAT_SHEEP: u8 = 0x86;
pub const STAT_CLUSTER: u8 = 0x87;
pub const GET_VDI_ATTR: u8 = 0x89;
pub const FORCE_RECOVER: u8 = 0x8a;
pub const GET_STORE_LIST: u8 = 0x90;
pub const CLEANUP: u8 = 0x94;
/// The original's tracer and NFS server requests: answered NO_SUPPORT here.
pub const TRACE_STATUS: u8 = 0x95;
pub const TRACE_READ_BUF: u8 = 0x96;
pub const TRACE_ENABLE: u8 = 0x9b;
pub const TRACE_DISABLE: u8 = 0x9c;
pub const NFS_CREATE: u8 = 0xbb;
pub const NFS_DELETE: u8 = 0xbc;
pub const STAT_RECOVERY: u8 = 0x97;
pub const FLUSH_DEL_CACHE: u8 = 0x98;
pub const NOTIFY_VDI_DEL: u8 = 0x99;
pub const KILL_NODE: u8 = 0x9a;
pub const GET_OBJ_LIST: u8 = 0xa1;
pub const GET_EPOCH: u8 = 0xa2;
pub const CREATE_AND_WRITE_PEER: u8 = 0xa3;
pub const READ_PEER: u8 = 0xa4;
pub const WRITE_PEER: u8 = 0xa5;
pub const REMOVE_PEER: u8 = 0xa6;
pub const ENABLE_RECOVER: u8 = 0xa8;
pub const DISABLE_RECOVER: u8 = 0xa9;
pub const GET_VDI_COPIES: u8 = 0xab;
pub const COMPLETE_RECOVERY: u8 = 0xac;
pub const NOTIFY_VDI_ADD: u8 = 0xaf;
pub const MD_INFO: u8 = 0xb1;
pub const MD_PLUG: u8 = 0xb2;
pub const MD_UNPLUG: u8 = 0xb3;
pub const GET_HASH: u8 = 0xb4;
pub const REWEIGHT: u8 = 0xb5;
pub const GET_CACHE_INFO: u8 = 0xb6;
pub const STAT: u8 = 0xb8;
pub const GET_LOGLEVEL: u8 = 0xb9;
pub const SET_LOGLEVEL: u8 = 0xba;
pub const EXIST: u8 = 0xbd;
pub const CLUSTER_INFO: u8 = 0xbe;
pub const ALTER_CLUSTER_COPY: u8 = 0xbf;
pub const ALTER_VDI_COPY: u8 = 0xc0;
pub const OIDS_EXIST: u8 = 0xc6;
pub const READ_DEL_VDIS: u8 = 0xc9;
pub const REPAIR_REPLICA: u8 = 0xc5;
pub const GET_RECOVERY: u8 = 0xca;
pub const SET_RECOVERY: u8 = 0xcb;
pub const SET_VNODES: u8 = 0xcc;
pub const GET_VNODES: u8 = 0xcd;
/// Makes every write this node took durable (defined, unused by the original; used here).
pub const FLUSH_PEER: u8 = 0xae;
/// Extension of this implementation (not in the original): a peer answers once it has applied
/// every cluster event up to the sequence number in `oid` (or after a bounded wait).
pub const WAIT_APPLIED: u8 = 0xf0;
/// Extension of this implementation: the VDIs open for writing (`vdi_lock::LockRecord`s).
pub const GET_VDI_LOCKS: u8 = 0xf1;
/// Extension: the tag of this node's best copy of `oid` in `rsp_obj_offset` (`u32::MAX`:
/// current, else the epoch in which the stale copy was last current), or NO_OBJ.
pub const OBJ_TAG: u8 = 0xf2;
/// Extension: every copy this node has, as 16-byte records (oid u64, tag u32, pad u32).
pub const OBJ_LIST_TAGGED: u8 = 0xf3;
/// Extension: a peer answers once it has applied every cluster event up to the sequence
/// number in `oid` (a snapshot's freeze) and no write to the VDI in `tgt_epoch` is in flight
/// there.
pub const DRAIN_VDI: u8 = 0xf4;
/// Extension: the first request of a sheep on each connection to another sheep, saying who it
/// is (its address in `forw_addr` and port in `forw_port`) and which cluster (the format's
/// ctime in `oid`). The receiver answers SUCCESS if that is one of its members and its
/// cluster (INVALID_CTIME for another cluster, INVALID_PARMS for a node it does not know);
/// the peer opcodes (`is_peer`) are refused on a connection that has not said so.
pub const HELLO_PEER: u8 = 0xf5;
/// Extension: a sheep whose NBD client wants to write a VDI asks the node of the VDI's writer
/// to hand the writer lock over. `tgt_epoch` is the VDI; the payload is two
/// `vdi_lock::LockRecord`s, the holder (on the receiver) and the new writer. SUCCESS once the
/// handover is applied cluster-wide on the receiver, VDI_LOCKED if the holder is still writing.
pub const NBD_HANDOVER: u8 = 0xf6;

/// Opcodes only a sheep sends to another sheep (`sheep::peers`): object copies, store syncs,
/// object lists, the tags of copies, waits on cluster events. (GET_HASH, OBJ_TAG and
/// REPAIR_REPLICA are sent by `dog vdi check` too, as by the original's dog, and are not
/// among them.)
pub fn is_peer(op: u8) -> bool {
    matches!(
        op,
        CREATE_AND_WRITE_PEER
            | READ_PEER
            | WRITE_PEER
            | REMOVE_PEER
            | FLUSH_PEER
            | GET_OBJ_LIST
            | OBJ_LIST_TAGGED
            | WAIT_APPLIED
            | DRAIN_VDI
            | NBD_HANDOVER
    )
}

/// Opcodes >= 0x80 are internal and must carry SD_SHEEP_PROTO_VER.
pub fn is_internal(op: u8) -> bool {
    op >= 0x80
}

/// The peer opcode a gateway opcode fans out to.
pub fn gateway_to_peer(op: u8) -> Option<u8> {
    match op {
        CREATE_AND_WRITE_OBJ => Some(CREATE_AND_WRITE_PEER),
        READ_OBJ => Some(READ_PEER),
        WRITE_OBJ => Some(WRITE_PEER),
        REMOVE_OBJ => Some(REMOVE_PEER),
        _ => None,
    }
}

/// The constant's name of an opcode ("READ_OBJ"), "UNKNOWN" for one this protocol lacks.
pub fn name(op: u8) -> &'static str {
    match op {
        CREATE_AND_WRITE_OBJ => "CREATE_AND_WRITE_OBJ",
        READ_OBJ => "READ_OBJ",
        WRITE_OBJ => "WRITE_OBJ",
        REMOVE_OBJ => "REMOVE_OBJ",
        DISCARD_OBJ => "DISCARD_OBJ",
        NEW_VDI => "NEW_VDI",
        LOCK_VDI => "LOCK_VDI",
        RELEASE_VDI => "RELEASE_VDI",
        GET_VDI_INFO => "GET_VDI_INFO",
        READ_VDIS => "READ_VDIS",
        FLUSH_VDI => "FLUSH_VDI",
        DEL_VDI => "DEL_VDI",
        GET_CLUSTER_DEFAULT => "GET_CLUSTER_DEFAULT",
        GET_NODE_LIST => "GET_NODE_LIST",
        MAKE_FS => "MAKE_FS",
        SHUTDOWN => "SHUTDOWN",
        STAT_SHEEP => "STAT_SHEEP",
        STAT_CLUSTER => "STAT_CLUSTER",
        GET_VDI_ATTR => "GET_VDI_ATTR",
        FORCE_RECOVER => "FORCE_RECOVER",
        GET_STORE_LIST => "GET_STORE_LIST",
        CLEANUP => "CLEANUP",
        TRACE_STATUS => "TRACE_STATUS",
        TRACE_READ_BUF => "TRACE_READ_BUF",
        TRACE_ENABLE => "TRACE_ENABLE",
        TRACE_DISABLE => "TRACE_DISABLE",
        NFS_CREATE => "NFS_CREATE",
        NFS_DELETE => "NFS_DELETE",
        STAT_RECOVERY => "STAT_RECOVERY",
        FLUSH_DEL_CACHE => "FLUSH_DEL_CACHE",
        NOTIFY_VDI_DEL => "NOTIFY_VDI_DEL",
        KILL_NODE => "KILL_NODE",
        GET_OBJ_LIST => "GET_OBJ_LIST",
        GET_EPOCH => "GET_EPOCH",
        CREATE_AND_WRITE_PEER => "CREATE_AND_WRITE_PEER",
        READ_PEER => "READ_PEER",
        WRITE_PEER => "WRITE_PEER",
        REMOVE_PEER => "REMOVE_PEER",
        ENABLE_RECOVER => "ENABLE_RECOVER",
        DISABLE_RECOVER => "DISABLE_RECOVER",
        GET_VDI_COPIES => "GET_VDI_COPIES",
        COMPLETE_RECOVERY => "COMPLETE_RECOVERY",
        NOTIFY_VDI_ADD => "NOTIFY_VDI_ADD",
        MD_INFO => "MD_INFO",
        MD_PLUG => "MD_PLUG",
        MD_UNPLUG => "MD_UNPLUG",
        GET_HASH => "GET_HASH",
        REWEIGHT => "REWEIGHT",
        GET_CACHE_INFO => "GET_CACHE_INFO",
        STAT => "STAT",
        GET_LOGLEVEL => "GET_LOGLEVEL",
        SET_LOGLEVEL => "SET_LOGLEVEL",
        EXIST => "EXIST",
        CLUSTER_INFO => "CLUSTER_INFO",
        ALTER_CLUSTER_COPY => "ALTER_CLUSTER_COPY",
        ALTER_VDI_COPY => "ALTER_VDI_COPY",
        OIDS_EXIST => "OIDS_EXIST",
        READ_DEL_VDIS => "READ_DEL_VDIS",
        REPAIR_REPLICA => "REPAIR_REPLICA",
        GET_RECOVERY => "GET_RECOVERY",
        SET_RECOVERY => "SET_RECOVERY",
        SET_VNODES => "SET_VNODES",
        GET_VNODES => "GET_VNODES",
        FLUSH_PEER => "FLUSH_PEER",
        WAIT_APPLIED => "WAIT_APPLIED",
        GET_VDI_LOCKS => "GET_VDI_LOCKS",
        OBJ_TAG => "OBJ_TAG",
        OBJ_LIST_TAGGED => "OBJ_LIST_TAGGED",
        DRAIN_VDI => "DRAIN_VDI",
        HELLO_PEER => "HELLO_PEER",
        NBD_HANDOVER => "NBD_HANDOVER",
        _ => "UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_kinds() {
        assert_eq!(name(READ_OBJ), "READ_OBJ");
        assert_eq!(name(DRAIN_VDI), "DRAIN_VDI");
        assert_eq!(name(0x7f), "UNKNOWN");
        assert!(is_peer(WRITE_PEER) && is_peer(OBJ_LIST_TAGGED) && is_peer(NBD_HANDOVER));
        assert!(!is_peer(WRITE_OBJ) && !is_peer(OBJ_TAG) && !is_peer(GET_HASH));
        // Every named opcode has a distinct name.
        let named: Vec<&str> = (0..=255u8).map(name).filter(|n| *n != "UNKNOWN").collect();
        let distinct: std::collections::BTreeSet<&str> = named.iter().copied().collect();
        assert_eq!(named.len(), distinct.len());
    }
}
