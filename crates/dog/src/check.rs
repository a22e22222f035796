//! `dog vdi check` and `dog cluster check`: every object of a VDI must have all its copies on
//! the nodes the ring gives it, with the same bytes; missing or differing copies are repaired
//! from a good one (GET_HASH and OBJ_TAG on every holder, REPAIR_REPLICA on the bad ones).
//! The good copy is the newest: the highest version (writes taken, which OBJ_TAG reports), and
//! among copies of that version the digest most of them agree on.
//! Owns: these commands. Never: deciding placement differently from the sheep.

use crate::conn::Sheep;
use crate::error::{failed, Fail, Res, EXIT_FAILURE};
use crate::lookup::{self, Inode};
use crate::Ctx;
use proto::ring::Ring;
use proto::{opcode, Header, Oid, SdNode, SdResult, Vid};
use std::collections::HashMap;

/// What one copy looks like: its digest and version, or why there is none.
enum Copy {
    Digest([u8; 20], u64),
    Missing,
}

async fn digest(n: &SdNode, oid: u64) -> Res<Copy> {
    let s = Sheep::connect_node(&n.nid).await?;
    let mut h = Header::request(opcode::GET_HASH);
    h.set_oid(oid);
    let r = s.call(h).await?;
    let d = match r.result() {
        SdResult::SUCCESS => r.header.rsp_digest(),
        SdResult::NO_OBJ => return Ok(Copy::Missing),
        e => {
            return Err(failed(
                &format!("failed to read the hash of {oid:016x}"),
                e,
                EXIT_FAILURE,
            ))
        }
    };
    // The version of the current copy (an older sheep that does not know OBJ_TAG: 0).
    let mut h = Header::request(opcode::OBJ_TAG);
    h.set_oid(oid);
    let r = s.call(h).await?;
    let current = r.result() == SdResult::SUCCESS
        && r.header.rsp_obj_offset() as u32 == proto::objlist::TAG_CURRENT;
    Ok(Copy::Digest(
        d,
        if current {
            r.header.rsp_obj_version()
        } else {
            0
        },
    ))
}

async fn repair(to: &SdNode, from: &SdNode, oid: u64) -> Res<()> {
    let s = Sheep::connect_node(&to.nid).await?;
    let mut h = Header::request(opcode::REPAIR_REPLICA);
    h.set_oid(oid)
        .set_forw_addr(&from.nid.addr)
        .set_forw_port(from.nid.port);
    let r = s.call(h).await?;
    if r.result() != SdResult::SUCCESS {
        return Err(failed(
            &format!("failed to repair {oid:016x}"),
            r.result(),
            EXIT_FAILURE,
        ));
    }
    Ok(())
}

/// Checks one object's copies and repairs the bad ones; false if no good copy exists.
async fn check_object(ring: &Ring, oid: u64, copies: usize) -> Res<bool> {
    let holders: Vec<SdNode> = ring.placement(Oid(oid), copies);
    let mut seen = Vec::new();
    for n in &holders {
        seen.push((n, digest(n, oid).await?));
    }
    // The good bytes: the newest copies' (highest version), and among those the digest most
    // of them agree on.
    let newest = seen
        .iter()
        .filter_map(|(_, c)| match c {
            Copy::Digest(_, v) => Some(*v),
            Copy::Missing => None,
        })
        .max();
    let mut votes: HashMap<[u8; 20], usize> = HashMap::new();
    for (_, c) in &seen {
        if let Copy::Digest(d, v) = c {
            if Some(*v) == newest {
                *votes.entry(*d).or_default() += 1;
            }
        }
    }
    let Some((&good, _)) = votes.iter().max_by_key(|(d, n)| (**n, **d)) else {
        errln!("no copy of {oid:016x} is left");
        return Ok(false);
    };
    let Some(source) = seen
        .iter()
        .find(|(_, c)| matches!(c, Copy::Digest(d, _) if *d == good))
        .map(|(n, _)| **n)
    else {
        return Ok(false);
    };
    for (n, c) in &seen {
        match c {
            Copy::Missing => {
                repair(n, &source, oid).await?;
                outln!("fixed missing {oid:016x}");
            }
            Copy::Digest(d, _) if *d != good => {
                repair(n, &source, oid).await?;
                outln!("fixed replica {oid:016x}");
            }
            Copy::Digest(..) => {}
        }
    }
    Ok(true)
}

/// Checks the inode and every data object a VDI refers to.
async fn check_vdi(ctx: &Ctx<'_>, ino: &Inode) -> Res<bool> {
    let ring = Ring::new(&ctx.nodes()?.nodes);
    let copies = ino.hdr.nr_copies.max(1) as usize;
    let mut ok = check_object(&ring, Oid::inode(Vid(ino.vid())).0, copies).await?;
    for (idx, &owner) in ino.table.iter().enumerate() {
        if owner != 0 {
            let oid = Oid::data(Vid(owner), idx as u32).0;
            ok &= check_object(&ring, oid, copies).await?;
        }
    }
    Ok(ok)
}

pub async fn vdi_check(ctx: &Ctx<'_>) -> Res<()> {
    let name = ctx.arg(0).ok_or_else(|| Fail::usage(""))?;
    let ino = lookup::open(&ctx.sheep, name, &ctx.opts.snapshot, true).await?;
    let ok = check_vdi(ctx, &ino).await?;
    outln!("finish check&repair {name}");
    if ok {
        Ok(())
    } else {
        Err(Fail::quiet(EXIT_FAILURE))
    }
}

pub async fn cluster_check(ctx: &Ctx<'_>) -> Res<()> {
    let mut inodes = Vec::new();
    lookup::walk(&ctx.sheep, true, |ino| inodes.push(ino)).await?;
    let mut ok = true;
    for ino in inodes.iter().filter(|i| !i.hdr.name.is_empty()) {
        ok &= check_vdi(ctx, ino).await?;
        outln!("finish check&repair {}", ino.name());
    }
    if ok {
        Ok(())
    } else {
        Err(Fail::quiet(EXIT_FAILURE))
    }
}
