//! `dog vm list` and `dog vdi lock list / unlock`: the VDIs open (locked), by which client,
//! through which node; and dropping a lock whose holder is gone for good.
//! Owns: these commands' requests (GET_VDI_LOCKS, RELEASE_VDI) and output. Never: taking locks.

use crate::error::{failed, Fail, Res, EXIT_FAILURE, EXIT_SYSFAIL};
use crate::lookup;
use crate::{fmt, Ctx};

/// RELEASE_VDI flag of this implementation: drop every holder (see sheep's ops).
const FLAG_FORCE_RELEASE: u16 = 0x800;
use proto::vdi_lock::{LockRecord, LOCK_RECORD_SIZE};
use proto::{opcode, Header};
use serde_json::json;

/// Records asked for at most (far more than VDIs a cluster has open at once).
const MAX_LOCKS: u32 = 65536;

pub async fn list(ctx: &Ctx<'_>) -> Res<()> {
    let r = ctx
        .sheep
        .read(
            Header::request(opcode::GET_VDI_LOCKS),
            MAX_LOCKS * LOCK_RECORD_SIZE as u32,
        )
        .await?;
    if !r.result().is_ok() {
        return Err(failed(
            "Failed to get the VDI locks",
            r.result(),
            EXIT_SYSFAIL,
        ));
    }
    let mut rows = Vec::new();
    for l in LockRecord::decode_list(&r.data) {
        let (name, size, used) = match lookup::read_inode(&ctx.sheep, l.vid, true).await? {
            Ok(i) => (i.name(), i.hdr.vdi_size, i.stat().0 * i.object_size()),
            Err(_) => (String::new(), 0, 0),
        };
        rows.push((name, size, used, l));
    }
    rows.sort_by(|a, b| (&a.0, a.3.vid, &a.3.client).cmp(&(&b.0, b.3.vid, &b.3.client)));
    let o = ctx.opts;
    if o.json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|(name, size, used, l)| {
                json!({
                    "name": name,
                    "size": size,
                    "used": used,
                    "vdi_id": format!("{:x}", l.vid),
                    "mode": mode(l),
                    "client": l.client,
                    "node": l.node,
                })
            })
            .collect();
        outln!("{}", serde_json::Value::Array(v));
        return Ok(());
    }
    if !o.raw {
        outln!(
            "  {:<16} {:>8} {:>7} {:>7}  {:<9}  {:<28} {}",
            "Name",
            "VDI id",
            "Size",
            "Used",
            "Mode",
            "Client",
            "Node"
        );
    }
    for (name, size, used, l) in &rows {
        if o.raw {
            outln!(
                "{name} {:x} {size} {used} {} {} {}",
                l.vid,
                mode(l),
                l.client.replace(' ', "_"),
                l.node
            );
        } else {
            outln!(
                "  {:<16} {:>8x} {:>7} {:>7}  {:<9}  {:<28} {}",
                name,
                l.vid,
                fmt::size(*size, false),
                fmt::size(*used, false),
                mode(l),
                l.client,
                l.node
            );
        }
    }
    Ok(())
}

/// `dog vdi lock unlock NAME`: drops every holder of the VDI's lock.
pub async fn unlock(ctx: &Ctx<'_>) -> Res<()> {
    let name = ctx.arg(0).ok_or_else(|| Fail::usage(""))?;
    let vid = lookup::find_vid(&ctx.sheep, name, &ctx.opts.snapshot)
        .await?
        .map_err(|e| failed(&format!("Failed to open VDI {name}"), e, EXIT_FAILURE))?;
    let mut h = Header::request(opcode::RELEASE_VDI);
    h.set_base_vdi_id(vid).add_flags(FLAG_FORCE_RELEASE);
    let r = ctx.sheep.call(h).await?;
    if !r.result().is_ok() {
        return Err(failed(
            &format!("Failed to unlock {name}"),
            r.result(),
            EXIT_FAILURE,
        ));
    }
    Ok(())
}

fn mode(l: &LockRecord) -> &'static str {
    if l.shared {
        "shared"
    } else {
        "exclusive"
    }
}
