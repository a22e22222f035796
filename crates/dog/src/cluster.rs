//! `dog cluster format / info / shutdown`.

use crate::conn::{fail, Dog, Res};
use crate::{fmt, Common};
use clap::Subcommand;
use proto::node::EpochLog;
use proto::{cluster_flags, opcode, Header, SdResult};

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Create a Sheepdog store
    Format {
        /// Number of copies of each object
        #[arg(short = 'c', long = "copies", default_value_t = 3)]
        copies: u8,
        /// Backend store
        #[arg(short = 'b', long = "store", default_value = "plain")]
        store: String,
        /// Enable VDI locking
        #[arg(short = 'l', long = "lock")]
        lock: bool,
        /// Refuse writes when there are fewer zones than copies
        #[arg(short = 't', long = "strict")]
        strict: bool,
        /// Object size as a power of two
        #[arg(short = 'z', long = "block_size_shift", default_value_t = 22)]
        block_size_shift: u8,
        /// Do not ask for confirmation
        #[arg(short = 'f', long = "force")]
        force: bool,
    },
    /// Show cluster information
    Info {
        #[arg(short = 'v', long = "verbose")]
        verbose: bool,
    },
    /// Stop Sheepdog
    Shutdown,
}

/// Node slots asked for in each epoch record of STAT_CLUSTER.
const NODES_NR: u32 = 1024;
const MAX_LOGS: u32 = 32;

pub async fn run(d: &Dog, c: &Common, cmd: Cmd) -> Res<()> {
    match cmd {
        Cmd::Format {
            copies,
            store,
            lock,
            strict,
            block_size_shift,
            force: _,
        } => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let mut flags = cluster_flags::AUTO_VNODES;
            if lock {
                flags |= cluster_flags::USE_LOCK;
            }
            if strict {
                flags |= cluster_flags::STRICT;
            }
            let mut h = Header::request(opcode::MAKE_FS);
            h.set_cluster_copies(copies)
                .set_cluster_flags(flags)
                .set_cluster_ctime((now.as_secs() << 32) | (now.subsec_micros() as u64 * 1000))
                .set_cluster_block_size_shift(block_size_shift);
            let mut name = store.clone().into_bytes();
            name.resize(proto::STORE_LEN, 0);
            println!("using backend {store} store");
            d.ok("Format failed", h, name, 0).await?;
            Ok(())
        }
        Cmd::Info { verbose } => info(d, c, verbose).await,
        Cmd::Shutdown => {
            d.ok(
                "failed to shutdown",
                Header::request(opcode::SHUTDOWN),
                Vec::new(),
                0,
            )
            .await?;
            Ok(())
        }
    }
}

async fn info(d: &Dog, c: &Common, verbose: bool) -> Res<()> {
    let mut h = Header::request(opcode::STAT_CLUSTER);
    h.set_cluster_nodes_nr(NODES_NR);
    let r = d
        .send(
            h,
            Vec::new(),
            MAX_LOGS * EpochLog::record_size(NODES_NR as usize) as u32,
        )
        .await?;
    let logs = EpochLog::decode_all(&r.data, NODES_NR as usize);
    let status = match r.result() {
        SdResult::SUCCESS => "running, auto-recovery enabled".to_string(),
        other => other.text(),
    };
    if c.json {
        let epochs: Vec<_> = logs
            .iter()
            .map(|l| serde_json::json!({"epoch": l.epoch, "time": l.time, "nodes": l.nodes.iter().map(|n| serde_json::json!({"addr": n.nid.to_string(), "vnodes": n.nr_vnodes, "zone": n.zone})).collect::<Vec<_>>()}))
            .collect();
        let first = logs.first();
        let v = serde_json::json!({"status": status, "ctime": first.map(|l| l.ctime >> 32), "copies": first.map(|l| l.nr_copies), "store": first.map(|l| l.drv_name.clone()), "epochs": epochs});
        println!("{v}");
        return Ok(());
    }
    println!("Cluster status: {status}");
    if let Some(first) = logs.first() {
        if verbose {
            println!(
                "Cluster store: {} with {} redundancy policy",
                first.drv_name, first.nr_copies
            );
            println!(
                "Cluster vnodes strategy: {}",
                if first.flags & cluster_flags::AUTO_VNODES != 0 {
                    "auto"
                } else {
                    "fixed"
                }
            );
            println!("Cluster vnode mode: node");
        }
        println!();
        println!(
            "Cluster created at {}",
            fmt::local_time(first.ctime >> 32, "%a %b %e %H:%M:%S %Y")
        );
        println!();
        if !c.raw {
            println!("Epoch Time           Version [Host:Port:V-Nodes,,,]");
        }
        for l in &logs {
            let t = if c.raw {
                l.time.to_string()
            } else {
                fmt::local_time(l.time, "%Y-%m-%d %H:%M:%S")
            };
            let nodes: Vec<String> = l
                .nodes
                .iter()
                .map(|n| format!("{}:{}", n.nid, n.nr_vnodes))
                .collect();
            if c.raw {
                println!("{} {} [{}]", t, l.epoch, nodes.join(", "));
            } else {
                println!("{} {:6} [{}]", t, l.epoch, nodes.join(", "));
            }
        }
    }
    if r.result() != SdResult::SUCCESS
        && r.result() != SdResult::WAIT_FOR_FORMAT
        && r.result() != SdResult::WAIT_FOR_JOIN
    {
        return Err(fail("Failed to get cluster info", r.result()));
    }
    Ok(())
}
