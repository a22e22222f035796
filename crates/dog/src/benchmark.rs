//! `dog benchmark io VDI`: whole-object writes over a fully allocated VDI, round robin, as
//! the original's (its data is overwritten: asked first unless -f). `-t N` writes in all
//! (default 1000); `-w ordered` one at a time (default), `dynamic` 16 at once, `fixed` `-n N`
//! at once. The original prints nothing (its `-T` tells the time); `--json` tells the
//! writes, bytes, seconds, MB/s and IOPS.
//! Owns: this command. Never: reading data back, placement.

use crate::cluster::confirm;
use crate::error::{Fail, Res, EXIT_SYSFAIL};
use crate::lookup;
use crate::Ctx;
use bytes::Bytes;
use futures::stream::{self, StreamExt};
use proto::{opcode, Header, Oid, SdResult, Vid};

const DEFAULT_TOTAL: u64 = 1000;
/// Writes at once of the "dynamic" work queue.
const DYNAMIC: usize = 16;

pub async fn io(ctx: &Ctx<'_>) -> Res<()> {
    let name = ctx.arg(0).ok_or_else(|| Fail::usage(""))?;
    if !ctx.opts.force {
        confirm(
            "Caution! benchmark io command will erase all data of target VDI.\n Are you sure \
             you want to continue? [yes/no]",
        )?;
    }
    let in_flight = match ctx.opts.workqueue.as_deref() {
        None | Some("ordered") => 1,
        Some("dynamic") => DYNAMIC,
        Some("fixed") => ctx.opts.nr_threads.unwrap_or(1),
        Some(other) => {
            return Err(Fail::new(
                EXIT_SYSFAIL,
                format!(
                    "unknown workqueue type: {other}\nassumed workqueue types: ordered, dynamic"
                ),
            ))
        }
    };
    let none = crate::cli::Snap::default();
    let ino = lookup::open(&ctx.sheep, name, &none, true)
        .await
        .map_err(|f| {
            Fail::new(
                EXIT_SYSFAIL,
                format!("failed to lookup VDI {name}: {}", f.msg),
            )
        })?;
    let size = ino.object_size();
    let objects = ino.hdr.vdi_size / size;
    if objects == 0 || (0..objects).any(|i| ino.owner(i) != ino.vid()) {
        return Err(Fail::new(
            EXIT_SYSFAIL,
            format!("VDI {name} has unallocated data"),
        ));
    }
    let total = ctx.opts.total.unwrap_or(DEFAULT_TOTAL);
    let buf = Bytes::from(vec![0u8; size as usize]);
    let start = std::time::Instant::now();
    let mut writes = stream::iter(0..total)
        .map(|n| {
            let buf = buf.clone();
            let sheep = ctx.sheep.clone();
            let hdr = &ino.hdr;
            async move {
                let oid = Oid::data(Vid(hdr.vdi_id), (n % objects) as u32).0;
                let mut h = Header::request(opcode::WRITE_OBJ);
                h.set_oid(oid)
                    .set_obj_copies(hdr.nr_copies)
                    .set_obj_copy_policy(hdr.copy_policy);
                let r = sheep.write(h, buf).await?;
                match r.result() {
                    SdResult::SUCCESS => Ok(()),
                    e => Err(Fail::new(
                        1,
                        format!("failed to write object {oid:016x}, {}", e.text()),
                    )),
                }
            }
        })
        .buffer_unordered(in_flight.max(1));
    while let Some(r) = writes.next().await {
        r?;
    }
    let secs = start.elapsed().as_secs_f64();
    if ctx.opts.json {
        let bytes = total * size;
        let v = serde_json::json!({
            "writes": total,
            "bytes": bytes,
            "in_flight": in_flight,
            "seconds": secs,
            "mb_per_s": bytes as f64 / 1e6 / secs.max(1e-9),
            "iops": total as f64 / secs.max(1e-9),
        });
        outln!("{v}");
    }
    Ok(())
}
