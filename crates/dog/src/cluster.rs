//! `dog cluster format / info / shutdown`: MAKE_FS (with the original's confirmations),
//! STAT_CLUSTER's epoch history printed as the original does, SHUTDOWN.
//! Owns: these three commands' requests and output. Never: option parsing.

use crate::error::{Fail, Res, EXIT_FAILURE, EXIT_SYSFAIL};
use crate::lookup::redundancy;
use crate::{fmt, Ctx};
use proto::node::EpochLog;
use proto::{cluster_flags, opcode, Header, SdResult};
use serde_json::json;
use std::time::{SystemTime, UNIX_EPOCH};

const FORMAT_PRINT: &str = "    __\n   ()'`;\n   /\\|`\n  /  |   Caution! The cluster is not \
                            empty.\n(/_)_|_  Are you sure you want to continue? [yes/no]: ";

/// Largest STAT_CLUSTER answer asked for (the client accepts up to 64 MiB).
const MAX_STAT_REPLY: usize = 48 << 20;

/// `confirm`: prints `msg`, reads a line; anything but "yes" ends dog with exit code 0.
pub(crate) fn confirm(msg: &str) -> Res<()> {
    // Shown at once on a terminal; into a file or pipe it goes with the rest of stdout, as
    // the original's buffered prompt does (`stdout`).
    out!("{msg}");
    let mut line = String::new();
    let n = std::io::stdin().read_line(&mut line).unwrap_or(0);
    let yes = line.get(..3).is_some_and(|s| s.eq_ignore_ascii_case("yes"));
    if n == 0 || !yes {
        return Err(Fail::quiet(0));
    }
    Ok(())
}

/// The MAKE_FS cluster flags for the format options.
fn format_flags(o: &crate::cli::Opts) -> u16 {
    let mut f = 0;
    if o.strict {
        f |= cluster_flags::STRICT;
    }
    if o.lock {
        f |= cluster_flags::USE_LOCK;
    }
    if o.recycle_vid {
        f |= cluster_flags::RECYCLE_VID;
    }
    if !o.fixed_vnodes {
        f |= cluster_flags::AUTO_VNODES;
    }
    if o.avoid_diskfull {
        f |= cluster_flags::AVOID_DISKFULL;
    }
    f
}

pub async fn format(ctx: &Ctx<'_>) -> Res<()> {
    format_as(ctx, ctx.opts).await
}

/// `cluster format` with the options `o` (`cluster snapshot load` formats as its farm says).
pub(crate) async fn format_as(ctx: &Ctx<'_>, o: &crate::cli::Opts) -> Res<()> {
    let (copies, policy) = o.copies.unwrap_or((proto::SD_DEFAULT_COPIES, 0));
    let zones = ctx.nodes()?.zones();
    // As the original: asked only of copies given with -c (the default is the sheep's).
    if !o.force && o.copies.is_some() && usize::from(copies) > zones {
        confirm(&format!(
            "Number of copies ({copies}) is larger than number of zones ({zones}).\n\
             Are you sure you want to continue? [yes/no]: "
        ))?;
    }
    let r = ctx
        .sheep
        .read(
            Header::request(opcode::READ_VDIS),
            proto::SD_VDI_BITMAP_SIZE as u32,
        )
        .await?;
    if r.result() != SdResult::SUCCESS {
        return Err(Fail::new(EXIT_FAILURE, r.result().text()));
    }
    if !o.force && r.data.iter().any(|&b| b != 0) {
        confirm(FORMAT_PRINT)?;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let ctime = (now.as_secs() << 32) | (u64::from(now.subsec_micros()) * 1000);
    let store = o
        .store
        .clone()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "plain".into());
    let mut h = Header::request(opcode::MAKE_FS);
    h.set_cluster_copies(copies)
        .set_cluster_copy_policy(policy)
        .set_cluster_block_size_shift(
            o.block_size_shift
                .unwrap_or(proto::SD_DEFAULT_BLOCK_SIZE_SHIFT),
        )
        .set_cluster_ctime(ctime)
        .set_cluster_flags(format_flags(o));
    let mut payload = store.clone().into_bytes();
    payload.push(0);
    outln!("using backend {store} store");
    let r = ctx.sheep.write(h, payload.into()).await?;
    match r.result() {
        SdResult::SUCCESS => Ok(()),
        SdResult::NO_STORE => {
            errln!("Format failed: {}", SdResult::NO_STORE.text());
            list_stores(ctx).await
        }
        e => Err(Fail::new(
            EXIT_SYSFAIL,
            format!("Format failed: {}", e.text()),
        )),
    }
}

/// After an unknown store: GET_STORE_LIST, printed; dog still exits 2, as the original.
async fn list_stores(ctx: &Ctx<'_>) -> Res<()> {
    let r = ctx
        .sheep
        .read(Header::request(opcode::GET_STORE_LIST), 512)
        .await?;
    if r.result() != SdResult::SUCCESS {
        return Err(Fail::new(
            EXIT_FAILURE,
            format!("Restore failed: {}", r.result().text()),
        ));
    }
    outln!("Available stores:");
    outln!("---------------------------------------");
    outln!("{}", String::from_utf8_lossy(proto::cstr_bytes(&r.data)));
    Err(Fail::quiet(EXIT_SYSFAIL))
}

/// Node slots per epoch record to ask for: room for twice today's members (older epochs may
/// have had more), at least 16. A sheep with an epoch that does not fit answers BUFFER_SMALL
/// (with the count it needs in rsp nr_nodes) and we ask again with more.
fn initial_slots(members: usize) -> usize {
    (members * 2).clamp(16, proto::SD_MAX_NODES)
}

/// STAT_CLUSTER: the cluster's result (the status) and its epochs, newest first.
pub(crate) async fn epoch_logs(ctx: &Ctx<'_>) -> Res<(SdResult, Vec<EpochLog>)> {
    let nl = ctx.nodes()?;
    let mut slots = initial_slots(nl.nodes.len());
    let r = loop {
        let rec = EpochLog::record_size(slots);
        let logs = (nl.epoch as usize).min(MAX_STAT_REPLY / rec);
        let mut h = Header::request(opcode::STAT_CLUSTER);
        h.set_cluster_nodes_nr(slots as u32);
        let r = ctx.sheep.read(h, (logs * rec) as u32).await?;
        if r.result() == SdResult::BUFFER_SMALL && slots < proto::SD_MAX_NODES {
            let need = r.header.rsp_nr_nodes() as usize;
            slots = if need > slots { need } else { slots * 2 }.min(proto::SD_MAX_NODES);
            continue;
        }
        break r;
    };
    Ok((r.result(), EpochLog::decode_all(&r.data, slots)))
}

pub async fn info(ctx: &Ctx<'_>) -> Res<()> {
    let (result, logs) = epoch_logs(ctx).await?;
    if ctx.opts.json {
        let mut v = info_json(result, &logs, ctx.opts.verbose);
        // Ours, so in --json only: a cluster with fewer zones than copies keeps fewer copies.
        let copies = logs.first().map(|l| usize::from(l.nr_copies)).unwrap_or(0);
        let zones = ctx.nodes()?.zones();
        if result == SdResult::SUCCESS {
            v["zones"] = json!(zones);
            v["degraded"] = json!(zones < copies);
        }
        outln!("{v}");
    } else {
        out!(
            "{}",
            info_text(result, &logs, ctx.opts.verbose, ctx.opts.raw)
        );
    }
    Ok(())
}

/// `cluster info` exactly as the original lays it out.
fn info_text(status: SdResult, logs: &[EpochLog], verbose: bool, raw: bool) -> String {
    let first = logs.first().cloned().unwrap_or_default();
    let ok = status == SdResult::SUCCESS;
    let mut s = String::new();
    if !raw {
        s.push_str("Cluster status: ");
    }
    if ok {
        let rec = if first.disable_recovery != 0 {
            "disabled"
        } else {
            "enabled"
        };
        s.push_str(&format!("running, auto-recovery {rec}\n"));
    } else {
        s.push_str(&format!("{}\n", status.text()));
    }
    if verbose {
        if !raw {
            s.push_str("Cluster store: ");
        }
        if ok {
            s.push_str(&format!(
                "{} with {} redundancy policy\n",
                first.drv_name,
                redundancy(first.nr_copies, first.copy_policy)
            ));
            if !raw {
                s.push_str("Cluster vnodes strategy: ");
            }
            s.push_str(if first.flags & cluster_flags::AUTO_VNODES != 0 {
                "auto\n"
            } else {
                "fixed\n"
            });
        } else {
            s.push_str(&format!("{}\n", status.text()));
        }
        if !raw {
            s.push_str("Cluster vnode mode: ");
        }
        s.push_str(if first.flags & cluster_flags::DISKMODE != 0 {
            "disk\n"
        } else {
            "node\n"
        });
    } else {
        s.push('\n');
    }
    if !raw && !logs.is_empty() {
        // ctime(3) ends in a newline, hence the blank line.
        s.push_str(&format!(
            "Cluster created at {}\n\n",
            fmt::ctime(first.ctime >> 32)
        ));
        s.push_str("Epoch Time           Version [Host:Port:V-Nodes,,,]\n");
    }
    for l in logs {
        let nodes: Vec<String> = l
            .nodes
            .iter()
            .map(|n| format!("{}:{}", fmt::addr(&n.nid.addr, n.nid.port), n.nr_vnodes))
            .collect();
        if raw {
            s.push_str(&format!("{} {}", l.time, l.epoch));
        } else {
            let t = fmt::local_time(l.time, "%Y-%m-%d %H:%M:%S");
            s.push_str(&format!("{t} {:6}", l.epoch));
        }
        s.push_str(&format!(" [{}]\n", nodes.join(", ")));
    }
    s
}

fn info_json(status: SdResult, logs: &[EpochLog], verbose: bool) -> serde_json::Value {
    let first = logs.first().cloned().unwrap_or_default();
    let ok = status == SdResult::SUCCESS;
    let mut v = json!({
        "status": if ok { "running".to_string() } else { status.text() },
        "vnode_strategy": if first.flags & cluster_flags::AUTO_VNODES != 0 { "auto" } else { "fixed" },
        "vnode_mode": if first.flags & cluster_flags::DISKMODE != 0 { "disk" } else { "node" },
    });
    if ok {
        v["auto_recovery"] = json!(first.disable_recovery == 0);
        v["store"] = json!({
            "driver": first.drv_name,
            "redundancy": redundancy(first.nr_copies, first.copy_policy),
            "nr_copies": first.nr_copies,
            "copy_policy": first.copy_policy,
            "block_size_shift": first.block_size_shift,
        });
    }
    if !logs.is_empty() {
        v["creation_time"] = json!(fmt::local_time(first.ctime >> 32, "%Y-%m-%d %H:%M:%S"));
        v["ctime"] = json!(first.ctime >> 32);
    }
    let epochs: Vec<serde_json::Value> = logs
        .iter()
        .map(|l| {
            let nodes: Vec<serde_json::Value> = l
                .nodes
                .iter()
                .map(|n| {
                    let mut node = json!({
                        "address": fmt::addr(&n.nid.addr, n.nid.port),
                        "vnodes": n.nr_vnodes,
                    });
                    if verbose {
                        node["zone"] = json!(n.zone);
                    }
                    node
                })
                .collect();
            json!({
                "epoch": l.epoch,
                "time": fmt::local_time(l.time, "%Y-%m-%d %H:%M:%S"),
                "timestamp": l.time,
                "nodes": nodes,
            })
        })
        .collect();
    v["logs"] = json!(epochs);
    v
}

pub async fn shutdown(ctx: &Ctx<'_>) -> Res<()> {
    let r = ctx.sheep.call(Header::request(opcode::SHUTDOWN)).await?;
    if r.result() != SdResult::SUCCESS {
        return Err(Fail::new(
            EXIT_FAILURE,
            format!(
                "Response's result: {}\nfailed to execute request",
                r.result().text()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{NodeId, SdNode};

    fn log(epoch: u32, ports: &[u16]) -> EpochLog {
        EpochLog {
            ctime: 1_795_382_591 << 32,
            time: 1_795_382_651,
            epoch,
            nr_copies: 3,
            flags: cluster_flags::AUTO_VNODES,
            drv_name: "plain".into(),
            nodes: ports
                .iter()
                .map(|&p| SdNode {
                    nid: NodeId::new(std::net::Ipv4Addr::LOCALHOST.into(), p),
                    nr_vnodes: 128,
                    zone: 0,
                    space: 0,
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn layout_as_the_original() {
        let logs = vec![log(3, &[7000, 7001, 7003]), log(2, &[7000, 7001])];
        let s = info_text(SdResult::SUCCESS, &logs, false, false);
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[0], "Cluster status: running, auto-recovery enabled");
        assert_eq!(lines[1], "");
        assert!(lines[2].starts_with("Cluster created at "));
        assert_eq!(lines[3], "");
        assert_eq!(
            lines[4],
            "Epoch Time           Version [Host:Port:V-Nodes,,,]"
        );
        assert!(
            lines[5]
                .ends_with("      3 [127.0.0.1:7000:128, 127.0.0.1:7001:128, 127.0.0.1:7003:128]"),
            "{}",
            lines[5]
        );
        assert_eq!(lines.len(), 7);

        let v = info_text(SdResult::SUCCESS, &logs, true, false);
        let vl: Vec<&str> = v.lines().collect();
        assert_eq!(vl[1], "Cluster store: plain with 3 redundancy policy");
        assert_eq!(vl[2], "Cluster vnodes strategy: auto");
        assert_eq!(vl[3], "Cluster vnode mode: node");
        assert!(vl[4].starts_with("Cluster created at "));

        let raw = info_text(SdResult::SUCCESS, &logs[..1], false, true);
        assert_eq!(
            raw,
            "running, auto-recovery enabled\n\n1795382651 3 [127.0.0.1:7000:128, \
             127.0.0.1:7001:128, 127.0.0.1:7003:128]\n"
        );
    }

    #[test]
    fn unformatted() {
        let s = info_text(SdResult::WAIT_FOR_FORMAT, &[], false, false);
        assert_eq!(s, "Cluster status: Waiting for cluster to be formatted\n\n");
        let j = info_json(SdResult::WAIT_FOR_FORMAT, &[], false);
        assert_eq!(j["status"], "Waiting for cluster to be formatted");
        assert_eq!(j["logs"], json!([]));
    }

    #[test]
    fn flags_for_options() {
        let mut o = crate::cli::Opts::default();
        assert_eq!(format_flags(&o), cluster_flags::AUTO_VNODES);
        o.lock = true;
        o.strict = true;
        o.fixed_vnodes = true;
        assert_eq!(
            format_flags(&o),
            cluster_flags::USE_LOCK | cluster_flags::STRICT
        );
        assert_eq!(initial_slots(3), 16);
        assert_eq!(initial_slots(100), 200);
        assert_eq!(initial_slots(10_000), proto::SD_MAX_NODES);
    }
}
