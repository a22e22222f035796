//! `dog vm list`: the VDIs open for writing (their lock), by which client, through which
//! node. Owns: that command's request (GET_VDI_LOCKS) and output. Never: taking locks.

use crate::error::{failed, Res, EXIT_SYSFAIL};
use crate::lookup;
use crate::Ctx;
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
        let name = match lookup::read_inode(&ctx.sheep, l.vid, false).await? {
            Ok(i) => i.name(),
            Err(_) => String::new(),
        };
        rows.push((name, l));
    }
    rows.sort_by(|a, b| (&a.0, a.1.vid, &a.1.client).cmp(&(&b.0, b.1.vid, &b.1.client)));
    let o = ctx.opts;
    if o.json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|(name, l)| {
                json!({
                    "name": name,
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
            "  {:<16} {:>8}  {:<9}  {:<24} {}",
            "Name",
            "VDI id",
            "Mode",
            "Client",
            "Node"
        );
    }
    for (name, l) in &rows {
        if o.raw {
            outln!(
                "{name} {:x} {} {} {}",
                l.vid,
                mode(l),
                l.client.replace(' ', "_"),
                l.node
            );
        } else {
            outln!(
                "  {:<16} {:>8x}  {:<9}  {:<24} {}",
                name,
                l.vid,
                mode(l),
                l.client,
                l.node
            );
        }
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
