//! `dog node stat / log level / md / vnodes`, `dog cluster reweight`: one node's request
//! counters (STAT), the log level of its daemon (GET_LOGLEVEL, SET_LOGLEVEL), its disks
//! (MD_INFO, MD_PLUG, MD_UNPLUG), its vnodes (SET_VNODES) and the cluster's weights by space
//! (REWEIGHT), with the original's texts and exit codes.
//! Owns: these commands' output. Never: another node's state than the one asked.

use crate::cluster::confirm;
use crate::conn::Sheep;
use crate::error::{failed, Fail, Res, EXIT_FAILURE, EXIT_SYSFAIL};
use crate::{fmt, Ctx};
use bytes::Bytes;
use proto::admin::{self, Stat, LOG_LEVELS};
use proto::{flags, opcode, Header, SdResult};

/// The original's exit code where its command returns -1.
const EXIT_MINUS_ONE: i32 = 255;

async fn stat_of(s: &Sheep) -> Res<Stat> {
    let r = s
        .read(Header::request(opcode::STAT), admin::STAT_SIZE as u32)
        .await?;
    if r.result() != SdResult::SUCCESS {
        return Err(failed(
            "failed to get stat information",
            r.result(),
            EXIT_FAILURE,
        ));
    }
    Stat::decode(&r.data)
        .ok_or_else(|| Fail::new(EXIT_SYSFAIL, "failed to get stat information: short answer"))
}

/// The two lines of `node stat`, raw or with their header; with `since` (`-w`), also the
/// bytes written and read and the requests since that reading.
fn stat_rows(s: &Stat, since: Option<&Stat>, raw: bool) -> String {
    let d = |a: u64, b: u64| a.saturating_sub(b);
    #[rustfmt::skip]
    let client = [s.gway_active_nr, s.gway_total_nr, s.gway_total_write_nr,
        s.gway_total_read_nr, s.gway_total_remove_nr, s.gway_total_flush_nr];
    #[rustfmt::skip]
    let peer = [s.peer_active_nr, s.peer_total_nr, s.peer_total_write_nr,
        s.peer_total_read_nr, s.peer_total_remove_nr, 0];
    let row = |label: &str, counts: [u64; 6], rx: u64, tx: u64, rates: Option<(u64, u64, u64)>| {
        let mut cols: Vec<String> = counts.iter().map(u64::to_string).collect();
        cols.push(fmt::size(rx, raw));
        cols.push(fmt::size(tx, raw));
        if let Some((wr, rd, n)) = rates {
            cols.extend([fmt::size(wr, raw), fmt::size(rd, raw), n.to_string()]);
        }
        let label = if raw {
            String::new()
        } else {
            format!("{label}\t")
        };
        format!("{label}{}", cols.join("\t"))
    };
    let client_rates = since.map(|l| {
        (
            d(s.gway_total_rx, l.gway_total_rx),
            d(s.gway_total_tx, l.gway_total_tx),
            d(s.gway_total_nr, l.gway_total_nr),
        )
    });
    let peer_rates = since.map(|l| {
        (
            d(s.peer_total_rx, l.peer_total_rx),
            d(s.peer_total_tx, l.peer_total_tx),
            d(s.peer_total_nr, l.peer_total_nr),
        )
    });
    let head = match (raw, since) {
        (true, _) => "",
        (false, None) => "Request\tActive\tTotal\tWrite\tRead\tRemove\tFlush\tAll WR\tAll RD\n",
        (false, Some(_)) => {
            "Request\tActive\tTotal\tWrite\tRead\tRemove\tFlush\tAll WR\tAll RD\tWRBW\tRDBW\tRPS\n"
        }
    };
    format!(
        "{head}{}\n{}",
        row(
            "Client",
            client,
            s.gway_total_rx,
            s.gway_total_tx,
            client_rates
        ),
        row("Peer", peer, s.peer_total_rx, s.peer_total_tx, peer_rates)
    )
}

/// `node stat --json`: the counters by side, and with `since` the rates of the last second.
fn stat_json(s: &Stat, since: Option<&Stat>) -> serde_json::Value {
    let d = |a: u64, b: u64| a.saturating_sub(b);
    let mut v = serde_json::json!({
        "client": {
            "active": s.gway_active_nr, "total": s.gway_total_nr,
            "write": s.gway_total_write_nr, "read": s.gway_total_read_nr,
            "remove": s.gway_total_remove_nr, "flush": s.gway_total_flush_nr,
            "written_bytes": s.gway_total_rx, "read_bytes": s.gway_total_tx,
        },
        "peer": {
            "active": s.peer_active_nr, "total": s.peer_total_nr,
            "write": s.peer_total_write_nr, "read": s.peer_total_read_nr,
            "remove": s.peer_total_remove_nr,
            "written_bytes": s.peer_total_rx, "read_bytes": s.peer_total_tx,
        },
    });
    if let Some(l) = since {
        v["client"]["per_second"] = serde_json::json!({
            "written_bytes": d(s.gway_total_rx, l.gway_total_rx),
            "read_bytes": d(s.gway_total_tx, l.gway_total_tx),
            "requests": d(s.gway_total_nr, l.gway_total_nr),
        });
        v["peer"]["per_second"] = serde_json::json!({
            "written_bytes": d(s.peer_total_rx, l.peer_total_rx),
            "read_bytes": d(s.peer_total_tx, l.peer_total_tx),
            "requests": d(s.peer_total_nr, l.peer_total_nr),
        });
    }
    v
}

/// `dog node stat [-w]`: the counters of the node dog talks to; with `-w`, again every
/// second with the rates, until interrupted (`--json`: one JSON object per line).
pub async fn stat(ctx: &Ctx<'_>) -> Res<()> {
    let raw = ctx.opts.raw;
    let show = |s: &Stat, since: Option<&Stat>| {
        if ctx.opts.json {
            outln!("{}", stat_json(s, since));
        } else {
            outln!("{}", stat_rows(s, since, raw));
        }
    };
    let mut s = stat_of(&ctx.sheep).await?;
    if !ctx.opts.watch {
        show(&s, None);
        return Ok(());
    }
    let mut last = s;
    loop {
        show(&s, Some(&last));
        last = s;
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        s = stat_of(&ctx.sheep).await?;
    }
}

/// The level list as `node log level list` prints it (on stderr, as the original's log).
fn level_list() -> String {
    LOG_LEVELS
        .iter()
        .enumerate()
        .map(|(i, l)| format!("{l}\t({i})"))
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn log_level_list(_ctx: &Ctx<'_>) -> Res<()> {
    errln!("{}", level_list());
    Ok(())
}

pub async fn log_level_get(ctx: &Ctx<'_>) -> Res<()> {
    let r = ctx
        .sheep
        .read(Header::request(opcode::GET_LOGLEVEL), 4)
        .await;
    let level = match r {
        Ok(r) if r.result() == SdResult::SUCCESS && r.data.len() >= 4 => {
            i32::from_le_bytes([r.data[0], r.data[1], r.data[2], r.data[3]])
        }
        _ => return Err(Fail::new(EXIT_MINUS_ONE, "Failed to execute request")),
    };
    let name = usize::try_from(level)
        .ok()
        .and_then(|i| LOG_LEVELS.get(i))
        .copied()
        .unwrap_or("unknown");
    errln!("{name} ({level})");
    Ok(())
}

pub async fn log_level_set(ctx: &Ctx<'_>) -> Res<()> {
    let name = &ctx.args[0];
    let Some(level) = admin::log_level(name) else {
        return Err(Fail::new(
            EXIT_MINUS_ONE,
            format!(
                "invalid loglevel: {name}\navailable loglevels:\n{}",
                level_list()
            ),
        ));
    };
    let mut h = Header::request(opcode::SET_LOGLEVEL);
    h.set_flags(flags::CMD_WRITE);
    let r = ctx
        .sheep
        .write(h, Bytes::copy_from_slice(&level.to_le_bytes()))
        .await;
    match r {
        Ok(r) if r.result() == SdResult::SUCCESS => Ok(()),
        _ => Err(Fail::new(EXIT_MINUS_ONE, "Failed to execute request")),
    }
}

/// The disk lines of one node for `node md info`.
async fn md_rows(s: &Sheep, raw: bool) -> Res<Vec<String>> {
    let disks = disks_of(s).await?;
    Ok(disks.iter().map(|d| md_row(s.name(), d, raw)).collect())
}

fn md_row(host: &str, d: &admin::Disk, raw: bool) -> String {
    let size = d.free.saturating_add(d.used);
    let ratio = if size == 0 {
        0
    } else {
        (d.used as f64 / size as f64 * 100.0) as i64
    };
    let (s, u, f) = (
        fmt::size(size, raw),
        fmt::size(d.used, raw),
        fmt::size(d.free, raw),
    );
    if raw {
        format!("{host} {} {s} {u} {f} {ratio}% {}", d.idx, d.path)
    } else {
        format!("{:2}\t{s}\t{u}\t{f}\t{ratio:3}%\t{}", d.idx, d.path)
    }
}

/// The disks of the node `s` as MD_INFO tells them.
async fn disks_of(s: &Sheep) -> Res<Vec<admin::Disk>> {
    let r = s
        .read(Header::request(opcode::MD_INFO), admin::MD_INFO_SIZE as u32)
        .await?;
    if r.result() != SdResult::SUCCESS {
        return Err(failed(
            "failed to get multi-disk information",
            r.result(),
            EXIT_FAILURE,
        ));
    }
    admin::decode_md_info(&r.data).ok_or_else(|| {
        Fail::new(
            EXIT_SYSFAIL,
            "failed to get multi-disk information: short answer",
        )
    })
}

/// `node md info --json`: one object per disk, with the node it is on.
async fn md_json(ctx: &Ctx<'_>) -> Res<()> {
    let mut nodes = Vec::new();
    if ctx.opts.all_nodes {
        for n in &ctx.nodes()?.nodes {
            nodes.push(Sheep::connect_node(&n.nid).await?);
        }
    } else {
        nodes.push(ctx.sheep.clone());
    }
    let mut out = Vec::new();
    for s in &nodes {
        for d in disks_of(s).await? {
            out.push(serde_json::json!({
                "address": s.name(),
                "id": d.idx,
                "path": d.path,
                "size": d.free.saturating_add(d.used),
                "used": d.used,
                "free": d.free,
            }));
        }
    }
    outln!("{}", serde_json::Value::Array(out));
    Ok(())
}

/// `dog node md info [-A]`: the disks of the node dog talks to, or of every node.
pub async fn md_info(ctx: &Ctx<'_>) -> Res<()> {
    if ctx.opts.json {
        return md_json(ctx).await;
    }
    let raw = ctx.opts.raw;
    if !raw {
        outln!("Id\tSize\tUsed\tAvail\tUse%\tPath");
    }
    if !ctx.opts.all_nodes {
        for l in md_rows(&ctx.sheep, raw).await? {
            outln!("{l}");
        }
        return Ok(());
    }
    for (i, n) in ctx.nodes()?.nodes.iter().enumerate() {
        if !raw {
            outln!("Node {i}:");
        }
        let s = Sheep::connect_node(&n.nid).await?;
        for l in md_rows(&s, raw).await? {
            outln!("{l}");
        }
    }
    Ok(())
}

/// `dog node vnodes set N`: the node dog talks to takes N vnodes (clusters of fixed vnodes).
pub async fn vnodes_set(ctx: &Ctx<'_>) -> Res<()> {
    let arg = ctx.arg(0).unwrap_or_default();
    let n = arg.parse::<u16>().ok().filter(|&n| n >= 1).ok_or_else(|| {
        Fail::bare_usage(format!(
            "Invalid number of vnodes '{arg}': must be an integer between 1 and {}",
            u16::MAX
        ))
    })?;
    let r = ctx
        .sheep
        .write(
            Header::request(opcode::SET_VNODES),
            Bytes::copy_from_slice(&i32::from(n).to_le_bytes()),
        )
        .await
        .map_err(|f| {
            Fail::new(
                EXIT_MINUS_ONE,
                format!("{}\nFailed to execute request", f.msg),
            )
        })?;
    if r.result() != SdResult::SUCCESS {
        return Err(Fail::new(EXIT_MINUS_ONE, "Failed to execute request"));
    }
    Ok(())
}

/// `dog cluster reweight`: every node measures its space again; the ring follows.
pub async fn reweight(ctx: &Ctx<'_>) -> Res<()> {
    let r = ctx.sheep.call(Header::request(opcode::REWEIGHT)).await?;
    if r.result() != SdResult::SUCCESS {
        return Err(Fail::new(EXIT_FAILURE, ""));
    }
    Ok(())
}

const MD_PLUG_PRINT: &str = "    __\n   ()'`;\n   /\\|`\n  /  |   Caution! The directories to be \
                             plugged will be purged.\n(/_)_|_  Are you sure you want to \
                             continue? [yes/no]: ";
const MD_UNPLUG_PRINT: &str = "    __\n   ()'`;\n   /\\|`\n  /  |   Caution! Recovery will be \
                               triggered after unplugging.\n(/_)_|_  Are you sure you want to \
                               continue? [yes/no]: ";

/// `dog node md plug|unplug <disks>`: asks the node to add or remove disks.
pub async fn md_plug(ctx: &Ctx<'_>, plug: bool) -> Res<()> {
    if !ctx.opts.force {
        confirm(if plug { MD_PLUG_PRINT } else { MD_UNPLUG_PRINT })?;
    }
    let op = if plug {
        opcode::MD_PLUG
    } else {
        opcode::MD_UNPLUG
    };
    let mut h = Header::request(op);
    h.set_flags(flags::CMD_WRITE);
    let mut disks = ctx.args[0].as_bytes().to_vec();
    disks.push(0);
    let r = ctx.sheep.write(h, Bytes::from(disks)).await?;
    if r.result() != SdResult::SUCCESS {
        return Err(Fail::new(
            EXIT_FAILURE,
            "Failed to execute request, look for sheep.log for more information",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_rows_as_the_original() {
        let s = Stat {
            gway_total_nr: 3,
            gway_total_write_nr: 2,
            gway_total_read_nr: 1,
            gway_total_rx: 8 << 20,
            peer_total_nr: 4,
            peer_total_write_nr: 4,
            peer_total_rx: 16 << 20,
            ..Stat::default()
        };
        assert_eq!(
            stat_rows(&Stat::default(), None, false),
            "Request\tActive\tTotal\tWrite\tRead\tRemove\tFlush\tAll WR\tAll RD\n\
             Client\t0\t0\t0\t0\t0\t0\t0.0 MB\t0.0 MB\nPeer\t0\t0\t0\t0\t0\t0\t0.0 MB\t0.0 MB"
        );
        assert_eq!(
            stat_rows(&s, None, true),
            "0\t3\t2\t1\t0\t0\t8388608\t0\n0\t4\t4\t0\t0\t0\t16777216\t0"
        );
        let last = Stat {
            gway_total_nr: 1,
            ..s
        };
        assert!(
            stat_rows(&s, Some(&last), true).starts_with("0\t3\t2\t1\t0\t0\t8388608\t0\t0\t0\t2\n")
        );
    }

    #[test]
    fn md_rows_as_the_original() {
        let d = admin::Disk {
            idx: 0,
            free: 80_486_789_120,
            used: 0,
            path: "/tmp/osd/0/obj".into(),
        };
        assert_eq!(
            md_row("127.0.0.1:7100", &d, false),
            " 0\t75 GB\t0.0 MB\t75 GB\t  0%\t/tmp/osd/0/obj"
        );
        assert_eq!(
            md_row("127.0.0.1:7100", &d, true),
            "127.0.0.1:7100 0 80486789120 0 80486789120 0% /tmp/osd/0/obj"
        );
    }

    #[test]
    fn level_list_as_the_original() {
        assert!(level_list().starts_with("emerg\t(0)\nalert\t(1)\n"));
        assert!(level_list().ends_with("info\t(6)\ndebug\t(7)"));
    }
}
