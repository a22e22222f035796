//! `dog`, the admin CLI: parses the original's command line and runs one command against one
//! sheep over the Sheepdog protocol. Output formats, messages and exit codes follow the
//! original 1.0 `dog`; `--json` adds machine-readable output.

mod cluster;
mod conn;
mod fmt;
mod node;
mod vdi;

use clap::{Args, Parser, Subcommand};
use conn::{Dog, Fail, Res, EXIT_USAGE};

#[derive(Parser, Debug)]
#[command(name = "dog", about = "Sheepdog administrator utility", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Options every command takes.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Address of the sheep to talk to
    #[arg(
        short = 'a',
        long = "address",
        default_value = "localhost",
        global = true
    )]
    pub address: String,
    /// Port of the sheep
    #[arg(short = 'p', long = "port", default_value_t = 7000, global = true)]
    pub port: u16,
    /// Raw output: no headers, sizes in bytes
    #[arg(short = 'r', long = "raw", global = true)]
    pub raw: bool,
    /// JSON output
    #[arg(long = "json", global = true)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Cluster commands
    Cluster {
        #[command(subcommand)]
        cmd: cluster::Cmd,
        #[command(flatten)]
        common: Common,
    },
    /// Node commands
    Node {
        #[command(subcommand)]
        cmd: node::Cmd,
        #[command(flatten)]
        common: Common,
    },
    /// VDI commands
    Vdi {
        #[command(subcommand)]
        cmd: vdi::Cmd,
        #[command(flatten)]
        common: Common,
    },
}

/// Runs `dog` with the process arguments; returns the exit code.
pub fn run() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => 0,
                _ => EXIT_USAGE,
            };
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{e}");
            return conn::EXIT_SYSFAIL;
        }
    };
    match rt.block_on(dispatch(cli.cmd)) {
        Ok(()) => 0,
        Err(Fail(msg, code)) => {
            if !msg.is_empty() {
                eprintln!("{msg}");
            }
            code
        }
    }
}

async fn dispatch(cmd: Cmd) -> Res<()> {
    match cmd {
        Cmd::Cluster { cmd, common } => {
            let d = Dog::connect(&common.address, common.port).await?;
            cluster::run(&d, &common, cmd).await
        }
        Cmd::Node { cmd, common } => {
            let d = Dog::connect(&common.address, common.port).await?;
            node::run(&d, &common, cmd).await
        }
        Cmd::Vdi { cmd, common } => {
            let d = Dog::connect(&common.address, common.port).await?;
            vdi::run(&d, &common, cmd).await
        }
    }
}
