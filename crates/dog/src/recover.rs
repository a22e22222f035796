//! `dog node recovery`, `dog cluster recover force|enable|disable|throttle`, `dog node kill`:
//! watching and steering recovery after membership changes.
//! Owns: these commands' requests and output. Never: option parsing.

use crate::cluster::confirm;
use crate::conn::Sheep;
use crate::error::{failed, Fail, Res, EXIT_FAILURE, EXIT_SYSFAIL, EXIT_USAGE};
use crate::{fmt, Ctx};
use proto::{opcode, Header, SdResult};
use serde_json::json;

const FORCE_PRINT: &str = "Caution! Please try starting all the cluster nodes normally before\n\
running this command.\n\n\
The cluster may need to be force recovered if:\n  \
- the master node fails to start because of epoch mismatch; or\n  \
- some nodes fail to start after a cluster shutdown.\n\n\
Are you sure you want to continue? [yes/no]: ";

use client::admin::Recovery as Stat;

/// STAT_RECOVERY of one node.
async fn stat(n: &proto::SdNode) -> Result<Stat, String> {
    let s = Sheep::connect_node(&n.nid).await.map_err(|f| f.msg)?;
    client::admin::stat_recovery(s.conn())
        .await
        .map_err(|e| match e.result() {
            Some(r) => format!("Response's result: {}", r.text()),
            None => s.volume_failure("STAT_RECOVERY", e).msg,
        })
}

/// Percentage done, as the original prints it.
fn percent(done: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        done as f64 * 100.0 / total as f64
    }
}

fn row(i: usize, host: &str, vnodes: u16, zone: u32, pct: f64, raw: bool) -> String {
    if raw {
        format!("{i} {host} {vnodes} {zone} {pct:.1}%")
    } else {
        format!(
            "{i:4}   {}{vnodes:5}{zone:11}{pct:11.1}%",
            fmt::left(host, 20)
        )
    }
}

pub async fn node_recovery(ctx: &Ctx<'_>) -> Res<()> {
    let nl = ctx.nodes()?;
    let o = ctx.opts;
    let mut rows = Vec::new();
    for (i, n) in nl.nodes.iter().enumerate() {
        match stat(n).await {
            Ok(s) if s.running => rows.push((i, n, s)),
            Ok(_) => {}
            Err(msg) => errln!("{msg}"),
        }
    }
    if o.json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|(i, n, s)| {
                json!({
                    "id": i,
                    "address": fmt::addr(&n.nid.addr, n.nid.port),
                    "finished": s.done,
                    "total": s.total,
                    "problem": s.problem,
                })
            })
            .collect();
        outln!("{}", serde_json::Value::Array(v));
        return Ok(());
    }
    if !o.raw {
        outln!("Nodes In Recovery:");
        outln!("  Id   Host:Port         V-Nodes       Zone       Progress");
    }
    for (i, n, s) in &rows {
        let host = fmt::addr(&n.nid.addr, n.nid.port);
        outln!(
            "{}",
            row(
                *i,
                &host,
                n.nr_vnodes,
                n.zone,
                percent(s.done, s.total),
                o.raw
            )
        );
    }
    Ok(())
}

/// `struct recovery_throttling` as SET_RECOVERY takes it.
fn throttle_payload(max: u32, interval_ms: u64) -> Vec<u8> {
    let mut b = vec![0u8; 24];
    b[..4].copy_from_slice(&max.to_le_bytes());
    b[8..16].copy_from_slice(&interval_ms.to_le_bytes());
    b[16] = (interval_ms > 0) as u8;
    b
}

/// `dog node recovery set-throttle MAX INTERVAL`: the node dog talks to recovers at most
/// MAX objects at a time with INTERVAL ms between batches (0 0: no throttle), checked and
/// worded as the original.
pub async fn set_throttle(ctx: &Ctx<'_>) -> Res<()> {
    let (max, interval) = match (ctx.arg(0), ctx.arg(1)) {
        (Some(m), Some(i)) => (m, i),
        (m, i) => {
            return Err(Fail::bare_usage(format!(
                "Invalid interval max ({}), interval ({})",
                m.unwrap_or("(null)"),
                i.unwrap_or("(null)")
            )))
        }
    };
    let m: u32 = match max.parse::<i64>() {
        Ok(v) if (0..=i64::from(u32::MAX)).contains(&v) => v as u32,
        _ => return Err(Fail::bare_usage(format!("Invalid max ({max})"))),
    };
    let i: u64 = match interval.parse::<i64>() {
        Ok(v) if v >= 0 => v as u64,
        _ => return Err(Fail::bare_usage(format!("Invalid interval ({interval})"))),
    };
    if (m == 0) != (i == 0) {
        return Err(Fail::bare_usage(format!(
            "Invalid interval max ({m}), interval ({i})"
        )));
    }
    let r = ctx
        .sheep
        .write(
            Header::request(opcode::SET_RECOVERY),
            throttle_payload(m, i).into(),
        )
        .await;
    match r {
        Ok(r) if r.result() == SdResult::SUCCESS => Ok(()),
        _ => Err(Fail::new(255, "Failed to execute request")),
    }
}

/// `dog node recovery get-throttle`, as the original prints it (on stderr).
pub async fn get_throttle(ctx: &Ctx<'_>) -> Res<()> {
    let r = ctx
        .sheep
        .read(Header::request(opcode::GET_RECOVERY), 24)
        .await;
    match r {
        Ok(r) if r.result() == SdResult::SUCCESS && r.data.len() >= 16 => {
            let max = u32::from_le_bytes([r.data[0], r.data[1], r.data[2], r.data[3]]);
            let mut b = [0u8; 8];
            b.copy_from_slice(&r.data[8..16]);
            errln!("max ({max}), interval ({})", u64::from_le_bytes(b));
            Ok(())
        }
        _ => Err(Fail::new(255, "Failed to execute request")),
    }
}

pub async fn cluster_recover(ctx: &Ctx<'_>) -> Res<()> {
    let usage =
        || Fail::usage("Usage: dog cluster recover force|enable|disable|throttle MAX INTERVAL_MS");
    match ctx.arg(0) {
        Some("force") => {
            if !ctx.opts.force {
                confirm(FORCE_PRINT)?;
            }
            let r = ctx
                .sheep
                .call(Header::request(opcode::FORCE_RECOVER))
                .await?;
            match r.result() {
                SdResult::SUCCESS => {}
                SdResult::INVALID_PARMS => {
                    return Err(Fail::new(
                        EXIT_FAILURE,
                        "The cluster is not waiting for nodes: nothing to force",
                    ))
                }
                e => return Err(failed("failed to force recover", e, EXIT_FAILURE)),
            }
            Ok(())
        }
        Some(a @ ("enable" | "disable")) => {
            let op = if a == "enable" {
                opcode::ENABLE_RECOVER
            } else {
                opcode::DISABLE_RECOVER
            };
            let r = ctx.sheep.call(Header::request(op)).await?;
            if r.result() != SdResult::SUCCESS {
                return Err(failed(
                    &format!("failed to {a} recovery"),
                    r.result(),
                    EXIT_FAILURE,
                ));
            }
            outln!("Cluster recovery: {a}");
            Ok(())
        }
        Some("throttle") => {
            let max: u32 = ctx.arg(1).and_then(|a| a.parse().ok()).ok_or_else(usage)?;
            let interval: u64 = ctx.arg(2).and_then(|a| a.parse().ok()).ok_or_else(usage)?;
            let nl = ctx.nodes()?;
            for n in &nl.nodes {
                let s = Sheep::connect_node(&n.nid).await?;
                let r = s
                    .write(
                        Header::request(opcode::SET_RECOVERY),
                        throttle_payload(max, interval).into(),
                    )
                    .await?;
                if r.result() != SdResult::SUCCESS {
                    return Err(failed(
                        "failed to set the recovery throttle",
                        r.result(),
                        EXIT_FAILURE,
                    ));
                }
            }
            outln!("recovery throttle: {max} objects at once, {interval} ms between them");
            Ok(())
        }
        _ => Err(usage()),
    }
}

pub async fn node_kill(ctx: &Ctx<'_>) -> Res<()> {
    let nl = ctx.nodes()?;
    let Some(idx) = ctx.arg(0).and_then(|a| a.parse::<usize>().ok()) else {
        return Err(Fail::new(EXIT_USAGE, "Invalid node id"));
    };
    let Some(n) = nl.nodes.get(idx) else {
        return Err(Fail::new(EXIT_USAGE, "Invalid node id"));
    };
    let s = Sheep::connect_node(&n.nid).await?;
    let r = s.call(Header::request(opcode::KILL_NODE)).await?;
    if r.result() != SdResult::SUCCESS {
        return Err(failed(
            "Failed to execute request",
            r.result(),
            EXIT_SYSFAIL,
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_rows_as_the_sample() {
        assert_eq!(
            row(2, "127.0.0.1:7003", 121, 3, 18.4, false),
            "   2   127.0.0.1:7003        121          3       18.4%"
        );
        assert_eq!(
            row(2, "127.0.0.1:7003", 121, 3, 18.4, true),
            "2 127.0.0.1:7003 121 3 18.4%"
        );
        assert_eq!(percent(1, 4), 25.0);
        assert_eq!(percent(0, 0), 0.0);
    }
}
