//! `dog node list / info`: the member list, and STAT_SHEEP asked of every member with the
//! cluster totals and the virtual size of all working VDIs.
//! Owns: these two commands' output. Never: fetching the node list (see `nodelist`).

use crate::conn::Sheep;
use crate::error::{Fail, Res, EXIT_SYSFAIL};
use crate::lookup;
use crate::{fmt, Ctx};
use serde_json::json;

pub fn list(ctx: &Ctx<'_>) -> Res<()> {
    let nl = ctx.nodes()?;
    let o = ctx.opts;
    if o.json {
        let v: Vec<serde_json::Value> = nl
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                json!({
                    "id": i,
                    "address": fmt::addr(&n.nid.addr, n.nid.port),
                    "vnodes": n.nr_vnodes,
                    "zone": n.zone,
                })
            })
            .collect();
        outln!("{}", serde_json::Value::Array(v));
        return Ok(());
    }
    if !o.raw {
        outln!("  Id   Host:Port         V-Nodes       Zone");
    }
    for (i, n) in nl.nodes.iter().enumerate() {
        outln!(
            "{}",
            list_row(
                i,
                &fmt::addr(&n.nid.addr, n.nid.port),
                n.nr_vnodes,
                n.zone,
                o.raw
            )
        );
    }
    Ok(())
}

/// One `node list` line: "%4d   %-20s\t%2d%11u", raw "%d %s %d %u".
fn list_row(i: usize, host: &str, vnodes: u16, zone: u32, raw: bool) -> String {
    if raw {
        format!("{i} {host} {vnodes} {zone}")
    } else {
        format!("{i:4}   {}\t{vnodes:2}{zone:11}", fmt::left(host, 20))
    }
}

/// Use% as the original computes it: truncated, 0 for an empty store.
fn ratio(size: u64, free: u64) -> u64 {
    if size == 0 {
        return 0;
    }
    (size.saturating_sub(free) as f64 / size as f64 * 100.0) as u64
}

/// One `node info` line.
fn info_row(id: usize, size: u64, free: u64, raw: bool) -> String {
    let used = size.saturating_sub(free);
    let (s, u, f) = (
        fmt::size(size, raw),
        fmt::size(used, raw),
        fmt::size(free, raw),
    );
    let r = ratio(size, free);
    if raw {
        format!("{id} {s} {u} {f} {r}%")
    } else {
        format!("{id:2}\t{s}\t{u}\t{f}\t{r:3}%")
    }
}

/// The `node info` totals.
fn total_rows(size: u64, free: u64, vdi_size: u64, raw: bool) -> String {
    let used = size.saturating_sub(free);
    let (s, u, f, v) = (
        fmt::size(size, raw),
        fmt::size(used, raw),
        fmt::size(free, raw),
        fmt::size(vdi_size, raw),
    );
    let r = ratio(size, free);
    if raw {
        format!("Total {s} {u} {f} {r}% {v}")
    } else {
        format!("Total\t{s}\t{u}\t{f}\t{r:3}%\n\nTotal virtual image size\t{v}")
    }
}

/// STAT_SHEEP of one member: (store size, free), or the message to print instead.
async fn stat_sheep(n: &proto::SdNode) -> Result<(u64, u64), String> {
    let s = Sheep::connect_node(&n.nid).await.map_err(|f| f.msg)?;
    match client::admin::stat_sheep(s.conn()).await {
        Ok(sp) => Ok((sp.size, sp.free)),
        Err(e) => Err(match e.result() {
            Some(r) => format!("Response's result: {}", r.text()),
            None => s.volume_failure("STAT_SHEEP", e).msg,
        }),
    }
}

pub async fn info(ctx: &Ctx<'_>) -> Res<()> {
    let nl = ctx.nodes()?;
    let raw = ctx.opts.raw;
    let json_out = ctx.opts.json;
    if !raw && !json_out {
        outln!("Id\tSize\tUsed\tAvail\tUse%");
    }
    let (mut size, mut free, mut answered) = (0u64, 0u64, 0usize);
    let mut rows = Vec::new();
    for (i, n) in nl.nodes.iter().enumerate() {
        match stat_sheep(n).await {
            Ok((s, f)) => {
                if json_out {
                    rows.push(json!({
                        "id": i,
                        "address": fmt::addr(&n.nid.addr, n.nid.port),
                        "size": s,
                        "used": s.saturating_sub(f),
                        "free": f,
                    }));
                } else {
                    outln!("{}", info_row(i, s, f, raw));
                }
                size = size.saturating_add(s);
                free = free.saturating_add(f);
                answered += 1;
            }
            Err(msg) => {
                if json_out {
                    rows.push(json!({ "id": i, "address": fmt::addr(&n.nid.addr, n.nid.port), "error": msg }));
                }
                errln!("{msg}")
            }
        }
    }
    if answered == 0 {
        return Err(Fail::new(
            EXIT_SYSFAIL,
            "Cannot get information from any nodes",
        ));
    }
    let mut vdi_size = 0u64;
    lookup::walk(&ctx.sheep, false, |ino| {
        if !ino.is_snapshot() {
            vdi_size = vdi_size.saturating_add(ino.hdr.vdi_size);
        }
    })
    .await
    .map_err(|f| Fail::new(EXIT_SYSFAIL, f.msg))?;
    if json_out {
        let v = json!({
            "nodes": rows,
            "total": { "size": size, "used": size.saturating_sub(free), "free": free },
            "virtual_image_size": vdi_size,
        });
        outln!("{v}");
    } else {
        outln!("{}", total_rows(size, free, vdi_size, raw));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_rows_as_the_sample() {
        assert_eq!(
            list_row(0, "127.0.0.1:7000", 128, 0, false),
            "   0   127.0.0.1:7000      \t128          0"
        );
        assert_eq!(
            list_row(3, "192.168.2.7:7000", 129, 118139072, false),
            "   3   192.168.2.7:7000    \t129  118139072"
        );
        assert_eq!(
            list_row(1, "127.0.0.1:7001", 128, 1, true),
            "1 127.0.0.1:7001 128 1"
        );
    }

    #[test]
    fn info_rows_as_the_sample() {
        let gb = 1u64 << 30;
        assert_eq!(
            info_row(0, 75 * gb, 74 * gb, false),
            " 0\t75 GB\t1.0 GB\t74 GB\t  1%"
        );
        assert_eq!(
            total_rows(224 * gb, 221 * gb, 4 * gb, false),
            "Total\t224 GB\t3.0 GB\t221 GB\t  1%\n\nTotal virtual image size\t4.0 GB"
        );
        assert_eq!(info_row(2, 100, 25, true), "2 100 75 25 75%");
        assert_eq!(total_rows(0, 0, 0, true), "Total 0 0 0 0% 0");
    }
}
