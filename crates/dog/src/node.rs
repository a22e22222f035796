//! `dog node list / info`.

use crate::conn::{Dog, Res};
use crate::{fmt, Common};
use clap::Subcommand;
use proto::{opcode, Header, SdNode};

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// List nodes
    List,
    /// Show each node's disk use
    Info,
}

pub async fn nodes(d: &Dog) -> Res<Vec<SdNode>> {
    let r = d
        .ok(
            "Failed to get node list",
            Header::request(opcode::GET_NODE_LIST),
            Vec::new(),
            80 * 6144,
        )
        .await?;
    Ok(SdNode::decode_list(&r.data))
}

pub async fn run(d: &Dog, c: &Common, cmd: Cmd) -> Res<()> {
    let list = nodes(d).await?;
    match cmd {
        Cmd::List => {
            if c.json {
                let v: Vec<_> = list.iter().enumerate().map(|(i, n)| serde_json::json!({"id": i, "addr": n.nid.to_string(), "vnodes": n.nr_vnodes, "zone": n.zone})).collect();
                println!("{}", serde_json::Value::Array(v));
                return Ok(());
            }
            if !c.raw {
                println!("  Id   Host:Port         V-Nodes       Zone");
            }
            for (i, n) in list.iter().enumerate() {
                if c.raw {
                    println!("{} {} {} {}", i, n.nid, n.nr_vnodes, n.zone);
                } else {
                    println!(
                        "{:4}   {:<20}\t{:2}{:11}",
                        i,
                        n.nid.to_string(),
                        n.nr_vnodes,
                        n.zone
                    );
                }
            }
            Ok(())
        }
        Cmd::Info => {
            if !c.raw {
                println!("Id\tSize\tUsed\tAvail\tUse%");
            }
            let (mut ts, mut tf) = (0u64, 0u64);
            for (i, n) in list.iter().enumerate() {
                let peer = Dog::connect(&n.nid.ip().to_string(), n.nid.port).await?;
                let r = peer
                    .ok(
                        "Failed to get node info",
                        Header::request(opcode::STAT_SHEEP),
                        Vec::new(),
                        0,
                    )
                    .await?;
                let (size, free) = (r.header.rsp_store_size(), r.header.rsp_store_free());
                ts += size;
                tf += free;
                println!("{}", usage_row(&format!("{i:2}"), size, free, c.raw));
            }
            println!("{}", usage_row("Total", ts, tf, c.raw));
            Ok(())
        }
    }
}

/// One `node info` line: label, size, used, available, use%.
fn usage_row(label: &str, size: u64, free: u64, raw: bool) -> String {
    let used = size.saturating_sub(free);
    let pct = (used * 100).checked_div(size).unwrap_or(0);
    format!(
        "{label}\t{}\t{}\t{}\t{pct:3}%",
        fmt::size(size, raw),
        fmt::size(used, raw),
        fmt::size(free, raw)
    )
}
