//! The commands `dog` knows, as the original's tables describe them: subcommands with their
//! arguments, option letters and descriptions, and the usage texts printed from them
//! (`dog --help`, `dog <command> <subcommand> --help`).
//! Owns: the command and option tables and usage text. Never: parsing or running.

pub const PROGRAM: &str = "dog";

/// What to run once the command line is understood.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    ClusterInfo,
    ClusterFormat,
    ClusterShutdown,
    NodeList,
    NodeInfo,
    VdiCreate,
    VdiDelete,
    VdiList,
    VdiRead,
    VdiWrite,
    VdiObjectLocation,
    VdiObjectMap,
    VdiObjectDumpInode,
    VmList,
    NodeRecovery,
    NodeKill,
    NodeStat,
    NodeLogLevelGet,
    NodeLogLevelSet,
    NodeLogLevelList,
    NodeMdInfo,
    NodeMdPlug,
    NodeMdUnplug,
    ClusterRecover,
    ClusterCheck,
    VdiCheck,
    VdiSnapshot,
    VdiClone,
    VdiRollback,
    VdiResize,
    VdiTree,
    VdiSetattr,
    VdiGetattr,
    VdiLockUnlock,
    VdiBackup,
    VdiRestore,
    VdiGraph,
    VdiTrack,
    VdiAlterCopy,
    ClusterAlterCopy,
    ClusterSnapshotSave,
    ClusterSnapshotList,
    ClusterSnapshotLoad,
    ClusterSnapshotShow,
    BenchmarkIo,
    UpgradeInodeConvert,
    UpgradeEpochConvert,
    UpgradeConfigConvert,
    UpgradeObjectLocation,
    NodeVnodesSet,
    NodeRecoverySetThrottle,
    NodeRecoveryGetThrottle,
    ClusterReweight,
}

pub struct OptDef {
    pub ch: char,
    pub long: &'static str,
    pub has_arg: bool,
    pub desc: &'static str,
}

/// Stands for `--json` in the option strings below; it has no short form.
pub const JSON: char = 'J';

const fn o(ch: char, long: &'static str, has_arg: bool, desc: &'static str) -> OptDef {
    OptDef {
        ch,
        long,
        has_arg,
        desc,
    }
}

pub static GLOBAL_OPTS: &[OptDef] = &[
    o(
        'a',
        "address",
        true,
        "specify the daemon address (default: localhost)",
    ),
    o('p', "port", true, "specify the daemon port"),
    o(
        'r',
        "raw",
        false,
        "raw output mode: omit headers, separate fields with\n                          \
         single spaces and print all sizes in decimal bytes",
    ),
    o('v', "verbose", false, "print more information than default"),
    o('h', "help", false, "display this help and exit"),
    o('T', "time", false, "show elapsed time"),
    o(JSON, "json", false, "print the output as JSON"),
];

static CLUSTER_OPTS: &[OptDef] = &[
    o('b', "store", true, "specify backend store"),
    o(
        'c',
        "copies",
        true,
        "specify the default data redundancy (number of copies)",
    ),
    o('f', "force", false, "do not prompt for confirmation"),
    o(
        'F',
        "avoid-diskfull",
        false,
        "skip recovery if recovery process can cause disk full",
    ),
    o('l', "lock", false, "Lock vdi to exclude multiple users"),
    o(
        'm',
        "multithread",
        false,
        "use multi-thread for 'cluster snapshot save'",
    ),
    o('R', "recyclevid", false, "enable recycling of VID"),
    o(
        't',
        "strict",
        false,
        "do not serve write request if number of nodes is not sufficient",
    ),
    o(
        'z',
        "block_size_shift",
        true,
        "specify the shift num of default data object size",
    ),
    o(
        'V',
        "fixedvnodes",
        false,
        "disable automatic vnodes calculation",
    ),
];

static NODE_OPTS: &[OptDef] = &[
    o('A', "all", false, "show md information of all the nodes"),
    o('f', "force", false, "ignore the confirmation"),
    o('w', "watch", false, "watch the stat every second"),
];

static VDI_OPTS: &[OptDef] = &[
    o('P', "prealloc", false, "preallocate all the data objects"),
    o('n', "no-share", false, "share nothing with its parent"),
    o('i', "index", true, "specify the index of data objects"),
    o('s', "snapshot", true, "specify a snapshot id or tag name"),
    o('w', "writeback", false, "use writeback mode"),
    o('c', "copies", true, "specify the data redundancy level"),
    o(
        'o',
        "oid",
        true,
        "specify the object id of the tracking object",
    ),
    o(
        'z',
        "block_size_shift",
        true,
        "specify the bit shift num for data object size",
    ),
    o('f', "force", false, "do operation forcibly"),
    o('x', "exclusive", false, "write in an exclusive mode"),
    o('d', "delete", false, "delete a key"),
    o(
        'F',
        "from",
        true,
        "create a differential backup from the snapshot",
    ),
];

pub struct Sub {
    pub name: &'static str,
    pub arg: Option<&'static str>,
    pub opts: &'static str,
    pub desc: &'static str,
    pub need_arg: bool,
    pub need_nodelist: bool,
    pub action: Option<Action>,
    pub subs: &'static [Sub],
}

pub struct Command {
    pub name: &'static str,
    pub subs: &'static [Sub],
    pub options: &'static [OptDef],
}

const fn sub(
    name: &'static str,
    arg: Option<&'static str>,
    opts: &'static str,
    desc: &'static str,
    need_arg: bool,
    need_nodelist: bool,
    action: Action,
) -> Sub {
    Sub {
        name,
        arg,
        opts,
        desc,
        need_arg,
        need_nodelist,
        action: Some(action),
        subs: &[],
    }
}

static VDI_OBJECT_SUBS: &[Sub] = &[
    sub(
        "location",
        None,
        "",
        "show object location information",
        true,
        true,
        Action::VdiObjectLocation,
    ),
    sub(
        "map",
        None,
        "",
        "show object map information",
        true,
        false,
        Action::VdiObjectMap,
    ),
    sub(
        "dump-inode",
        None,
        "",
        "dump inode information",
        true,
        false,
        Action::VdiObjectDumpInode,
    ),
];

static VDI_LOCK_SUBS: &[Sub] = &[
    sub(
        "list",
        None,
        "aprhTJ",
        "list the locked VDIs and their holders",
        false,
        false,
        Action::VmList,
    ),
    sub(
        "unlock",
        None,
        "aphT",
        "unlock a VDI whose holder is gone",
        true,
        false,
        Action::VdiLockUnlock,
    ),
];

static VDI_SUBS: &[Sub] = &[
    sub(
        "create",
        Some("<vdiname> <size>"),
        "PcaphrvzT",
        "create an image",
        true,
        true,
        Action::VdiCreate,
    ),
    sub(
        "delete",
        Some("<vdiname>"),
        "saphT",
        "delete an image",
        true,
        false,
        Action::VdiDelete,
    ),
    sub(
        "list",
        Some("[vdiname]"),
        "aprhoTJ",
        "list images",
        false,
        false,
        Action::VdiList,
    ),
    Sub {
        name: "object",
        arg: Some("<vdiname>"),
        opts: "isaphT",
        desc: "show object information in the image",
        need_arg: true,
        need_nodelist: false,
        action: None,
        subs: VDI_OBJECT_SUBS,
    },
    sub(
        "snapshot",
        Some("<vdiname>"),
        "saphrvT",
        "create a snapshot",
        true,
        false,
        Action::VdiSnapshot,
    ),
    sub(
        "clone",
        Some("<src vdi> <dst vdi>"),
        "sPncaphrvT",
        "clone an image",
        true,
        false,
        Action::VdiClone,
    ),
    sub(
        "rollback",
        Some("<vdiname>"),
        "saphfrvT",
        "rollback to a snapshot",
        true,
        false,
        Action::VdiRollback,
    ),
    sub(
        "resize",
        Some("<vdiname> <new size>"),
        "aphT",
        "resize an image",
        true,
        false,
        Action::VdiResize,
    ),
    sub(
        "tree",
        None,
        "aphTJ",
        "show images in tree view format",
        false,
        false,
        Action::VdiTree,
    ),
    sub(
        "alter-copy",
        Some("<vdiname>"),
        "caphTf",
        "set the vdi's redundancy level",
        true,
        true,
        Action::VdiAlterCopy,
    ),
    sub(
        "track",
        Some("<vdiname>"),
        "isaphoT",
        "show the object epoch trace in the image",
        true,
        true,
        Action::VdiTrack,
    ),
    sub(
        "graph",
        None,
        "aphT",
        "show images in Graphviz dot format",
        false,
        false,
        Action::VdiGraph,
    ),
    sub(
        "setattr",
        Some("<vdiname> <key> [value]"),
        "dxaphT",
        "set a VDI attribute",
        true,
        false,
        Action::VdiSetattr,
    ),
    sub(
        "getattr",
        Some("<vdiname> <key>"),
        "aphT",
        "get a VDI attribute",
        true,
        false,
        Action::VdiGetattr,
    ),
    sub(
        "backup",
        Some("<vdiname>"),
        "sFaphT",
        "create an incremental backup between two snapshots",
        true,
        false,
        Action::VdiBackup,
    ),
    sub(
        "restore",
        Some("<vdiname>"),
        "saphT",
        "restore snapshot images from a backup",
        true,
        false,
        Action::VdiRestore,
    ),
    sub(
        "check",
        Some("<vdiname>"),
        "saphT",
        "check and repair image's consistency",
        true,
        true,
        Action::VdiCheck,
    ),
    sub(
        "read",
        Some("<vdiname> [<offset> [<len>]]"),
        "saphT",
        "read data from an image",
        true,
        false,
        Action::VdiRead,
    ),
    sub(
        "write",
        Some("<vdiname> [<offset> [<len>]]"),
        "apwhT",
        "write data to an image",
        true,
        false,
        Action::VdiWrite,
    ),
    Sub {
        name: "lock",
        arg: Some("<vdiname>"),
        opts: "saprhTJ",
        desc: "show or release the locks of images",
        need_arg: false,
        need_nodelist: false,
        action: None,
        subs: VDI_LOCK_SUBS,
    },
];

static NODE_SUBS: &[Sub] = &[
    sub(
        "list",
        None,
        "aprhTJ",
        "list nodes",
        false,
        true,
        Action::NodeList,
    ),
    sub(
        "info",
        None,
        "aprhTJ",
        "show information about each node",
        false,
        true,
        Action::NodeInfo,
    ),
    Sub {
        name: "recovery",
        arg: None,
        opts: "aprhTJ",
        desc: "show recovery information of nodes",
        need_arg: false,
        need_nodelist: true,
        action: Some(Action::NodeRecovery),
        subs: NODE_RECOVERY_SUBS,
    },
    sub(
        "kill",
        Some("<node id>"),
        "aprhT",
        "kill node",
        true,
        true,
        Action::NodeKill,
    ),
    sub(
        "stat",
        None,
        "aprwhTJ",
        "show stat information about the node",
        false,
        false,
        Action::NodeStat,
    ),
    Sub {
        name: "log",
        arg: None,
        opts: "aphT",
        desc: "show or set log level of the node",
        need_arg: true,
        need_nodelist: false,
        action: None,
        subs: NODE_LOG_SUBS,
    },
    Sub {
        name: "md",
        arg: Some("[disks]"),
        opts: "aprAfhTJ",
        desc: "See 'dog node md' for more information",
        need_arg: true,
        need_nodelist: false,
        action: None,
        subs: NODE_MD_SUBS,
    },
    Sub {
        name: "vnodes",
        arg: Some("<num of vnodes>"),
        opts: "aph",
        desc: "set new vnodes",
        need_arg: true,
        need_nodelist: false,
        action: None,
        subs: NODE_VNODES_SUBS,
    },
];

static NODE_VNODES_SUBS: &[Sub] = &[sub(
    "set",
    Some("<num of vnodes>"),
    "aph",
    "set new vnodes",
    true,
    false,
    Action::NodeVnodesSet,
)];

static NODE_RECOVERY_SUBS: &[Sub] = &[
    sub(
        "info",
        None,
        "aphPrT",
        "show recovery information of nodes (default)",
        false,
        true,
        Action::NodeRecovery,
    ),
    sub(
        "set-throttle",
        Some("<max> <interval>"),
        "aph",
        "set new throttling",
        false,
        false,
        Action::NodeRecoverySetThrottle,
    ),
    sub(
        "get-throttle",
        None,
        "aph",
        "get current throttling",
        false,
        false,
        Action::NodeRecoveryGetThrottle,
    ),
];

static NODE_LOG_SUBS: &[Sub] = &[Sub {
    name: "level",
    arg: None,
    opts: "aphT",
    desc: "manipulate loglevel",
    need_arg: true,
    need_nodelist: false,
    action: None,
    subs: NODE_LOG_LEVEL_SUBS,
}];

static NODE_LOG_LEVEL_SUBS: &[Sub] = &[
    sub(
        "set",
        Some("<log level>"),
        "aphT",
        "set new loglevel",
        true,
        false,
        Action::NodeLogLevelSet,
    ),
    sub(
        "get",
        None,
        "aphT",
        "get current loglevel",
        false,
        false,
        Action::NodeLogLevelGet,
    ),
    sub(
        "list",
        None,
        "aphT",
        "list available loglevels",
        false,
        false,
        Action::NodeLogLevelList,
    ),
];

static NODE_MD_SUBS: &[Sub] = &[
    sub(
        "info",
        None,
        "aprAfhTJ",
        "show multi-disk information",
        false,
        true,
        Action::NodeMdInfo,
    ),
    sub(
        "plug",
        None,
        "aprAfhT",
        "plug more disk(s) into node",
        true,
        false,
        Action::NodeMdPlug,
    ),
    sub(
        "unplug",
        None,
        "aprAfhT",
        "unplug disk(s) from node",
        true,
        false,
        Action::NodeMdUnplug,
    ),
];

static CLUSTER_SUBS: &[Sub] = &[
    sub(
        "info",
        None,
        "aprhvTJ",
        "show cluster information",
        false,
        true,
        Action::ClusterInfo,
    ),
    sub(
        "format",
        None,
        "bctaphzTVlRFf",
        "create a Sheepdog store",
        false,
        true,
        Action::ClusterFormat,
    ),
    sub(
        "shutdown",
        None,
        "aphT",
        "stop Sheepdog",
        false,
        false,
        Action::ClusterShutdown,
    ),
    sub(
        "recover",
        Some("force|enable|disable|throttle <max> <interval ms>"),
        "afphT",
        "See 'dog cluster recover' for more information",
        true,
        true,
        Action::ClusterRecover,
    ),
    Sub {
        name: "snapshot",
        arg: Some("<tag|idx> <path> [vdi1] [vdi2] ..."),
        opts: "aphTmJ",
        desc: "snapshot/restore the cluster",
        need_arg: true,
        need_nodelist: false,
        action: None,
        subs: CLUSTER_SNAPSHOT_SUBS,
    },
    sub(
        "alter-copy",
        None,
        "aphTcf",
        "set the cluster's redundancy level",
        false,
        true,
        Action::ClusterAlterCopy,
    ),
    sub(
        "reweight",
        None,
        "aphT",
        "reweight the cluster",
        false,
        false,
        Action::ClusterReweight,
    ),
    sub(
        "check",
        None,
        "aphT",
        "check and repair cluster",
        false,
        true,
        Action::ClusterCheck,
    ),
];

static CLUSTER_SNAPSHOT_SUBS: &[Sub] = &[
    sub(
        "save",
        None,
        "h",
        "save snapshot to localpath",
        true,
        true,
        Action::ClusterSnapshotSave,
    ),
    sub(
        "list",
        None,
        "hJ",
        "list snapshot of localpath",
        true,
        false,
        Action::ClusterSnapshotList,
    ),
    sub(
        "load",
        None,
        "h",
        "load snapshot from localpath",
        true,
        true,
        Action::ClusterSnapshotLoad,
    ),
    sub(
        "show",
        None,
        "h",
        "show vdi list from snapshot",
        true,
        true,
        Action::ClusterSnapshotShow,
    ),
];

static VM_SUBS: &[Sub] = &[sub(
    "list",
    None,
    "aprhTJ",
    "list the VDIs open for writing and their clients",
    false,
    false,
    Action::VmList,
)];

pub static COMMANDS: &[Command] = &[
    Command {
        name: "vdi",
        subs: VDI_SUBS,
        options: VDI_OPTS,
    },
    Command {
        name: "node",
        subs: NODE_SUBS,
        options: NODE_OPTS,
    },
    Command {
        name: "cluster",
        subs: CLUSTER_SUBS,
        options: CLUSTER_OPTS,
    },
    Command {
        name: "vm",
        subs: VM_SUBS,
        options: &[],
    },
    Command {
        name: "benchmark",
        subs: BENCHMARK_SUBS,
        options: BENCHMARK_OPTS,
    },
    Command {
        name: "upgrade",
        subs: UPGRADE_SUBS,
        options: UPGRADE_OPTS,
    },
];

static UPGRADE_OPTS: &[OptDef] = &[o('o', "orig-version", true, "version of converting file")];

static UPGRADE_SUBS: &[Sub] = &[
    sub(
        "inode-convert",
        Some("<path of original inode file> <path of new inode file>"),
        "hTo",
        "upgrade inode object file",
        true,
        false,
        Action::UpgradeInodeConvert,
    ),
    sub(
        "epoch-convert",
        Some("<path of original epoch log file> <path of new epoch log file>"),
        "hTo",
        "upgrade epoch log file",
        true,
        false,
        Action::UpgradeEpochConvert,
    ),
    sub(
        "config-convert",
        Some("<path of original config file> <path of new config file>"),
        "hT",
        "upgrade config file",
        true,
        false,
        Action::UpgradeConfigConvert,
    ),
    sub(
        "object-location",
        Some("<path of latest epoch file> <oid>"),
        "hT",
        "print object location",
        true,
        false,
        Action::UpgradeObjectLocation,
    ),
];

static BENCHMARK_OPTS: &[OptDef] = &[
    o('w', "workqueue", true, "specify workqueue type"),
    o('f', "force", false, "do not prompt for confirmation"),
    o(
        't',
        "total",
        true,
        "a number of total operation (e.g. I/O request)",
    ),
    o(
        'n',
        "nr-threads",
        true,
        "a number of worker threads (only used for fixed workqueue)",
    ),
];

static BENCHMARK_SUBS: &[Sub] = &[sub(
    "io",
    Some("<vdiname>"),
    "aprhTfwtnJ",
    "benchmark I/O performance",
    true,
    true,
    Action::BenchmarkIo,
)];

pub fn find_opt(cmd: &Command, ch: char) -> Option<&'static OptDef> {
    GLOBAL_OPTS
        .iter()
        .chain(cmd.options.iter())
        .find(|o| o.ch == ch)
}

/// `dog --help`.
pub fn main_usage() -> String {
    let mut s = format!(
        "Sheepdog administrator utility\nUsage: {PROGRAM} <command> <subcommand> [options]\n\
         \nAvailable commands:\n"
    );
    for c in COMMANDS {
        for sc in c.subs {
            let name = format!("{} {}", c.name, sc.name);
            s.push_str(&format!("  {name:<24}{}\n", sc.desc));
        }
    }
    s.push_str(&format!(
        "\nFor more information, run '{PROGRAM} <command> <subcommand> --help'.\n"
    ));
    s
}

/// `subcommand_usage`: the synopsis, nested subcommands and options of one subcommand.
pub fn sub_usage(cmd: &Command, sc: &Sub) -> String {
    sub_usage_at(cmd, &[sc.name], sc)
}

/// The usage of `sc`, reached from `cmd` through the subcommand names `path` (`["log",
/// "level"]` for `dog node log level`).
pub fn sub_usage_at(cmd: &Command, path: &[&str], sc: &Sub) -> String {
    let mut s = format!("Usage: {PROGRAM} {} {}", cmd.name, path.join(" "));
    match sc.subs {
        [] => {}
        [only] => s.push_str(&format!(" {}", only.name)),
        subs => {
            let names: Vec<&str> = subs.iter().map(|x| x.name).collect();
            s.push_str(&format!(" {{{}}}", names.join("|")));
        }
    }
    let opts: Vec<&OptDef> = sc.opts.chars().filter_map(|c| find_opt(cmd, c)).collect();
    for od in &opts {
        if od.ch == JSON {
            s.push_str(" [--json]");
        } else if od.has_arg {
            s.push_str(&format!(" [-{} {}]", od.ch, od.long));
        } else {
            s.push_str(&format!(" [-{}]", od.ch));
        }
    }
    if let Some(arg) = sc.arg {
        s.push_str(&format!(" {arg}"));
    }
    s.push('\n');
    if !sc.subs.is_empty() {
        s.push_str("Available subcommands:\n");
        for x in sc.subs {
            s.push_str(&format!("  {:<24}{}\n", x.name, x.desc));
        }
    }
    s.push_str("Options:\n");
    for od in &opts {
        let name = if od.ch == JSON {
            format!("    --{}", od.long)
        } else {
            format!("-{}, --{}", od.ch, od.long)
        };
        s.push_str(&format!("  {name:<24}{}\n", od.desc));
    }
    s
}
