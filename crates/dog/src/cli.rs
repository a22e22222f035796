//! The command line as the original reads it: `dog <command> <subcommand> [options] [args]`
//! with getopt_long-style options anywhere after the subcommand (`-rv`, `-c3`, `-c 3`,
//! `--copies=3`, unique long prefixes, `--`), and the original's usage texts, complaints and
//! exit codes. `--json` is ours and has no short form.
//! Owns: `Opts` and turning argv into an `Invocation`. Never: talking to sheep.

pub use crate::commands::Action;
use crate::commands::{
    find_opt, main_usage, sub_usage, sub_usage_at, OptDef, COMMANDS, JSON, PROGRAM,
};
use crate::error::{EXIT_FAILURE, EXIT_USAGE};

/// A snapshot named on the command line (`-s`): by id, or by tag when not a number.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snap {
    pub id: u32,
    pub tag: String,
}

/// Every option of every command, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opts {
    pub address: String,
    pub port: u16,
    pub raw: bool,
    pub verbose: bool,
    pub json: bool,
    pub time: bool,
    /// `-c`: copies and copy policy (non-zero for erasure coding "d:p").
    pub copies: Option<(u8, u8)>,
    pub store: Option<String>,
    pub force: bool,
    pub strict: bool,
    pub lock: bool,
    pub recycle_vid: bool,
    pub avoid_diskfull: bool,
    pub fixed_vnodes: bool,
    pub block_size_shift: Option<u8>,
    pub prealloc: bool,
    /// `vdi clone -n`: the clone copies every object (shares nothing with the snapshot).
    pub no_share: bool,
    /// `benchmark io -t N`: writes in all.
    pub total: Option<u64>,
    /// `benchmark io -n N`: writers of a fixed work queue.
    pub nr_threads: Option<usize>,
    /// `benchmark io -w ordered|dynamic|fixed`.
    pub workqueue: Option<String>,
    /// `upgrade -o v0.7|v0.8`: the layout of the file to convert.
    pub upgrade_from: Option<String>,
    pub index: Option<u64>,
    pub snapshot: Snap,
    pub writeback: bool,
    pub oid: Option<u64>,
    /// `-x`: setattr only if the attribute does not exist.
    pub exclusive: bool,
    /// `-d`: setattr deletes the attribute.
    pub delete: bool,
    /// `-F`: the snapshot an incremental backup starts from.
    pub from: Option<Snap>,
    /// `-w` of node commands: print again every second.
    pub watch: bool,
    /// `-A`: every node, not only the one dog talks to.
    pub all_nodes: bool,
}

impl Default for Opts {
    fn default() -> Opts {
        Opts {
            address: "localhost".into(),
            port: proto::SD_DEFAULT_PORT,
            raw: false,
            verbose: false,
            json: false,
            time: false,
            copies: None,
            store: None,
            force: false,
            strict: false,
            lock: false,
            recycle_vid: false,
            avoid_diskfull: false,
            fixed_vnodes: false,
            block_size_shift: None,
            prealloc: false,
            no_share: false,
            total: None,
            nr_threads: None,
            workqueue: None,
            upgrade_from: None,
            index: None,
            snapshot: Snap::default(),
            writeback: false,
            oid: None,
            exclusive: false,
            delete: false,
            from: None,
            watch: false,
            all_nodes: false,
        }
    }
}

/// A command ready to run.
#[derive(Debug)]
pub struct Invocation {
    pub action: Action,
    pub opts: Opts,
    /// Positional arguments after the (sub)subcommand name.
    pub args: Vec<String>,
    pub need_nodelist: bool,
    /// The subcommand's usage, printed when the command fails with EXIT_USAGE.
    pub usage: String,
}

/// The outcome of parsing: run something, or print and exit.
#[derive(Debug)]
pub enum Parsed {
    Run(Box<Invocation>),
    Exit {
        code: i32,
        stdout: String,
        stderr: String,
    },
}

fn exit(code: i32, stdout: String, stderr: String) -> Parsed {
    Parsed::Exit {
        code,
        stdout,
        stderr,
    }
}

fn is_help(s: &str) -> bool {
    matches!(s, "help" | "--help" | "-h")
}

/// strtol: optional blanks and sign, then digits in `radix`; trailing junk ignored.
fn strtol(s: &str, radix: u32) -> Option<i64> {
    let t = s.trim_start();
    let (neg, t) = match t.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let end = t.find(|c: char| !c.is_digit(radix)).unwrap_or(t.len());
    if end == 0 {
        return None;
    }
    let v = i64::from_str_radix(&t[..end], radix).unwrap_or(i64::MAX);
    Some(if neg { -v } else { v })
}

/// `parse_copy`: "x" replicated copies (1..31), or "d:p" erasure coding (d in 2,4,8,16,
/// p in 1..15) giving copies d+p and policy (d/2)<<4 | p. `None` when invalid.
pub fn parse_copy(s: &str) -> Option<(u8, u8)> {
    let mut toks = s.split(':').filter(|t| !t.is_empty());
    let n1 = toks.next()?;
    let n2 = toks.next();
    let numeric = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    if !numeric(n1) || n2.is_some_and(|t| !numeric(t)) {
        return None;
    }
    let copy: u64 = n1.parse().unwrap_or(u64::MAX);
    if copy > u64::from(proto::SD_MAX_COPIES) {
        return None;
    }
    let Some(n2) = n2 else {
        return (copy > 0).then_some((copy as u8, 0));
    };
    if ![2, 4, 8, 16].contains(&copy) {
        return None;
    }
    let parity: u64 = n2.parse().unwrap_or(u64::MAX);
    if parity == 0 || parity >= 16 {
        return None;
    }
    Some(((copy + parity) as u8, (((copy / 2) << 4) + parity) as u8))
}

fn invalid_copies(opt: &str) -> String {
    format!(
        "Invalid parameter {opt}\nTo create replicated vdi, set -c x\n  x(1 to {}) \
         \x20 - number of replicated copies\nTo create erasure coded vdi, set -c x:y\n  \
         x(2,4,8,16)  - number of data strips\n  y(1 to 15)   - number of parity strips\n",
        proto::SD_MAX_COPIES
    )
}

/// Applies one option with its argument, as the original's command parsers do.
fn apply(opts: &mut Opts, od: &OptDef, val: Option<String>) -> Result<(), (i32, String)> {
    let v = val.unwrap_or_default();
    match od.ch {
        // `-w` is `--watch` for node commands, `--writeback` for vdi ones.
        'w' if od.long == "watch" => opts.watch = true,
        'A' => opts.all_nodes = true,
        'a' => opts.address = v,
        'p' => match strtol(&v, 10) {
            Some(p) if (1..=i64::from(u16::MAX)).contains(&p) => opts.port = p as u16,
            _ => return Err((EXIT_USAGE, format!("Invalid port number '{v}'\n"))),
        },
        'r' => opts.raw = true,
        'n' if od.has_arg => opts.nr_threads = v.parse().ok().filter(|&n| n > 0),
        'n' => opts.no_share = true,
        'v' => opts.verbose = true,
        'T' => opts.time = true,
        JSON => opts.json = true,
        'b' => {
            let mut s = v;
            while s.len() >= proto::STORE_LEN {
                s.pop();
            }
            opts.store = Some(s);
        }
        'c' => match parse_copy(&v) {
            Some(c) => opts.copies = Some(c),
            None => return Err((EXIT_FAILURE, invalid_copies(&v))),
        },
        'f' => opts.force = true,
        // `vdi backup -F SNAP` takes a value; `cluster format -F` does not.
        'F' if !v.is_empty() => {
            let whole = v.bytes().all(|b| b.is_ascii_digit());
            opts.from = Some(match v.parse::<u32>() {
                Ok(id) if whole => Snap {
                    id,
                    tag: String::new(),
                },
                _ => Snap { id: 0, tag: v },
            });
        }
        'F' => opts.avoid_diskfull = true,
        'l' => opts.lock = true,
        'R' => opts.recycle_vid = true,
        't' if od.has_arg => opts.total = v.parse().ok().filter(|&n| n > 0),
        't' => opts.strict = true,
        'V' => opts.fixed_vnodes = true,
        'z' => {
            let shift = strtol(&v, 10).unwrap_or(0) as u8;
            if shift > proto::SD_MAX_BLOCK_SIZE_SHIFT {
                return Err((
                    EXIT_FAILURE,
                    "Object Size is limited to 2^31. Please set shift bit lower than 31\n".into(),
                ));
            }
            if shift < proto::SD_MIN_BLOCK_SIZE_SHIFT {
                return Err((
                    EXIT_FAILURE,
                    "Object Size is larger than 2^20. Please set shift bit larger than 20\n".into(),
                ));
            }
            opts.block_size_shift = Some(shift);
        }
        'P' => opts.prealloc = true,
        'w' if od.has_arg => opts.workqueue = Some(v),
        'w' => opts.writeback = true,
        'i' => {
            let idx = match v.strip_prefix("0x") {
                Some(hex) => strtol(hex, 16),
                None => strtol(&v, 10),
            };
            match idx {
                Some(i) => opts.index = Some(i as u64),
                None => {
                    return Err((
                        EXIT_FAILURE,
                        "The index must be a decimal integer or a hexadecimal integer \
                         started with 0x\n"
                            .into(),
                    ))
                }
            }
        }
        's' => {
            let whole = !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit());
            match (whole, v.parse::<u32>()) {
                (true, Ok(0)) => {
                    return Err((
                        EXIT_FAILURE,
                        "The snapshot id must be larger than zero\n".into(),
                    ))
                }
                (true, Ok(id)) => {
                    opts.snapshot = Snap {
                        id,
                        tag: String::new(),
                    }
                }
                _ => opts.snapshot = Snap { id: 0, tag: v },
            }
        }
        'o' if od.long == "orig-version" => opts.upgrade_from = Some(v),
        'o' => match u64::from_str_radix(v.trim_start_matches("0x"), 16) {
            Ok(oid) => opts.oid = Some(oid),
            Err(_) => return Err((EXIT_FAILURE, "object id must be a hex integer\n".into())),
        },
        'x' => opts.exclusive = true,
        'd' => opts.delete = true,
        _ => {}
    }
    Ok(())
}

/// Parses `argv` (program name first).
pub fn parse(argv: &[String]) -> Parsed {
    let prog = argv.first().map(String::as_str).unwrap_or(PROGRAM);
    let try_help = format!("Try '{PROGRAM} --help' for more information.\n");
    let Some(cmd_name) = argv.get(1) else {
        // The original prints the usage and exits 0 here; our brief asks for a usage error.
        return exit(EXIT_USAGE, main_usage(), String::new());
    };
    let Some(cmd) = COMMANDS.iter().find(|c| c.name == cmd_name) else {
        if is_help(cmd_name) {
            return exit(0, main_usage(), String::new());
        }
        return exit(
            EXIT_USAGE,
            String::new(),
            format!("Invalid command '{cmd_name}'\n{try_help}"),
        );
    };
    let sub_name = argv.get(2);
    let Some(sc) = sub_name.and_then(|n| cmd.subs.iter().find(|s| s.name == n)) else {
        let mut err = String::new();
        if let Some(n) = sub_name.filter(|n| !is_help(n)) {
            err.push_str(&format!("Invalid command '{} {n}'\n", cmd.name));
        }
        err.push_str(&format!("Available {} commands:\n", cmd.name));
        for s in cmd.subs {
            err.push_str(&format!("  {} {}\n", cmd.name, s.name));
        }
        return exit(EXIT_USAGE, String::new(), err);
    };
    let usage = sub_usage(cmd, sc);
    let allowed: Vec<&OptDef> = sc.opts.chars().filter_map(|c| find_opt(cmd, c)).collect();
    let bad = |msg: String| exit(EXIT_USAGE, String::new(), format!("{msg}\n{try_help}"));
    let mut opts = Opts::default();
    let mut args: Vec<String> = Vec::new();
    let mut i = 3;
    while i < argv.len() {
        let a = &argv[i];
        i += 1;
        if a == "--" {
            args.extend(argv[i..].iter().cloned());
            break;
        }
        if let Some(body) = a.strip_prefix("--") {
            let (name, inline) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (body, None),
            };
            let od = match allowed.iter().find(|x| x.long == name) {
                Some(x) => *x,
                None => {
                    let cands: Vec<&&OptDef> = allowed
                        .iter()
                        .filter(|x| x.long.starts_with(name))
                        .collect();
                    match cands.as_slice() {
                        [one] => **one,
                        [] => return bad(format!("{prog}: unrecognized option '{a}'")),
                        many => {
                            let list: String =
                                many.iter().map(|x| format!(" '--{}'", x.long)).collect();
                            return bad(format!(
                                "{prog}: option '--{name}' is ambiguous; possibilities:{list}"
                            ));
                        }
                    }
                }
            };
            let val = if od.has_arg {
                match inline {
                    Some(v) => Some(v.to_string()),
                    None if i < argv.len() => {
                        i += 1;
                        Some(argv[i - 1].clone())
                    }
                    None => {
                        return bad(format!(
                            "{prog}: option '--{}' requires an argument",
                            od.long
                        ))
                    }
                }
            } else {
                if inline.is_some() {
                    return bad(format!(
                        "{prog}: option '--{}' doesn't allow an argument",
                        od.long
                    ));
                }
                None
            };
            if od.ch == 'h' {
                return exit(0, usage, String::new());
            }
            if let Err((c, m)) = apply(&mut opts, od, val) {
                return exit(c, String::new(), m);
            }
        } else if a.len() > 1 && a.starts_with('-') {
            let chars: Vec<char> = a[1..].chars().collect();
            let mut j = 0;
            while j < chars.len() {
                let c = chars[j];
                j += 1;
                let Some(od) = allowed.iter().find(|x| x.ch == c && c != JSON) else {
                    return bad(format!("{prog}: invalid option -- '{c}'"));
                };
                if c == 'h' {
                    return exit(0, usage, String::new());
                }
                let val = if od.has_arg {
                    let rest: String = chars[j..].iter().collect();
                    j = chars.len();
                    if !rest.is_empty() {
                        Some(rest)
                    } else if i < argv.len() {
                        i += 1;
                        Some(argv[i - 1].clone())
                    } else {
                        return bad(format!("{prog}: option requires an argument -- '{c}'"));
                    }
                } else {
                    None
                };
                if let Err((c, m)) = apply(&mut opts, od, val) {
                    return exit(c, String::new(), m);
                }
            }
        } else {
            args.push(a.clone());
        }
    }
    if sc.need_arg && args.first().is_none_or(|a| a.is_empty()) {
        return exit(EXIT_USAGE, usage, String::new());
    }
    // A subcommand of subcommands (`vdi lock list`, `node log level get`): the next
    // arguments name one at each level.
    let (mut cur, mut path, mut need_nodelist, mut usage) =
        (sc, vec![sc.name], sc.need_nodelist, usage);
    let action = loop {
        if let Some(action) = cur.action {
            // A command that also has subcommands (`node recovery [info|set-throttle|...]`)
            // runs itself unless the next argument names one of them.
            let named = args
                .first()
                .is_some_and(|a| cur.subs.iter().any(|s| s.name == a));
            if !named {
                break action;
            }
        }
        if args.is_empty() {
            return exit(EXIT_USAGE, usage, String::new());
        }
        let name = args.remove(0);
        let Some(next) = cur.subs.iter().find(|s| s.name == name) else {
            return exit(EXIT_FAILURE, usage, String::new());
        };
        if next.need_arg && args.first().is_none_or(|a| a.is_empty()) {
            if next.action.is_some() {
                return exit(EXIT_USAGE, usage, String::new());
            }
            path.push(next.name);
            return exit(EXIT_USAGE, sub_usage_at(cmd, &path, next), String::new());
        }
        need_nodelist |= next.need_nodelist;
        if next.action.is_none() {
            path.push(next.name);
            usage = sub_usage_at(cmd, &path, next);
        }
        cur = next;
    };
    Parsed::Run(Box::new(Invocation {
        action,
        opts,
        args,
        need_nodelist,
        usage,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Parsed {
        let mut v = vec!["dog".to_string()];
        v.extend(args.iter().map(|s| s.to_string()));
        parse(&v)
    }

    fn run(args: &[&str]) -> Invocation {
        match p(args) {
            Parsed::Run(i) => *i,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    fn code(args: &[&str]) -> (i32, String, String) {
        match p(args) {
            Parsed::Exit {
                code,
                stdout,
                stderr,
            } => (code, stdout, stderr),
            other => panic!("{args:?}: {other:?}"),
        }
    }

    #[test]
    fn options_anywhere_after_the_subcommand() {
        let i = run(&[
            "vdi", "create", "Alice", "-c", "2", "1G", "-p7001", "-a", "10.0.0.1",
        ]);
        assert_eq!(i.action, Action::VdiCreate);
        assert_eq!(i.args, vec!["Alice", "1G"]);
        assert_eq!(i.opts.copies, Some((2, 0)));
        assert_eq!(i.opts.port, 7001);
        assert_eq!(i.opts.address, "10.0.0.1");
        assert!(i.need_nodelist);

        let i = run(&[
            "cluster",
            "format",
            "--copies=3",
            "-lt",
            "--block_size_shift",
            "23",
        ]);
        assert_eq!(i.opts.copies, Some((3, 0)));
        assert!(i.opts.lock && i.opts.strict);
        assert_eq!(i.opts.block_size_shift, Some(23));

        let i = run(&["cluster", "format", "--cop", "4:2"]);
        assert_eq!(i.opts.copies, Some((6, 0x22)));

        let i = run(&["vdi", "list", "-r", "--json", "--", "-odd-name"]);
        assert!(i.opts.raw && i.opts.json);
        assert_eq!(i.args, vec!["-odd-name"]);
    }

    #[test]
    fn nested_subcommands() {
        let i = run(&[
            "vdi", "object", "location", "-i", "0x10", "Alice", "-s", "snap1",
        ]);
        assert_eq!(i.action, Action::VdiObjectLocation);
        assert_eq!(i.args, vec!["Alice"]);
        assert_eq!(i.opts.index, Some(16));
        assert_eq!(i.opts.snapshot.tag, "snap1");
        assert!(i.need_nodelist);
        let i = run(&["vdi", "object", "map", "Alice", "-s", "2"]);
        assert_eq!(i.action, Action::VdiObjectMap);
        assert_eq!(
            i.opts.snapshot,
            Snap {
                id: 2,
                tag: String::new()
            }
        );
        assert_eq!(code(&["vdi", "object", "nope", "Alice"]).0, EXIT_FAILURE);
        assert_eq!(code(&["vdi", "object"]).0, EXIT_USAGE);
        assert_eq!(code(&["vdi", "object", "location"]).0, EXIT_USAGE);
    }

    #[test]
    fn usage_errors_like_the_original() {
        let (c, out, _) = code(&[]);
        assert_eq!(c, EXIT_USAGE);
        assert!(out.contains("Usage: dog <command> <subcommand> [options]"));
        let (c, out, _) = code(&["--help"]);
        assert_eq!(c, 0);
        assert!(
            out.contains("  vdi create              create an image\n"),
            "{out}"
        );
        let (c, _, err) = code(&["frobnicate"]);
        assert_eq!(c, EXIT_USAGE);
        assert_eq!(
            err,
            "Invalid command 'frobnicate'\nTry 'dog --help' for more information.\n"
        );
        let (c, _, err) = code(&["vdi"]);
        assert_eq!(c, EXIT_USAGE);
        assert!(
            err.starts_with("Available vdi commands:\n  vdi create\n"),
            "{err}"
        );
        let (c, _, err) = code(&["vdi", "--help"]);
        assert_eq!(c, EXIT_USAGE);
        assert!(!err.contains("Invalid command"));
        let (c, _, err) = code(&["vdi", "frob"]);
        assert_eq!(c, EXIT_USAGE);
        assert!(err.starts_with("Invalid command 'vdi frob'\n"));
        let (c, out, _) = code(&["vdi", "create"]);
        assert_eq!(c, EXIT_USAGE);
        assert!(out.starts_with("Usage: dog vdi create [-P] [-c copies] [-a address]"));
        let (c, _, err) = code(&["vdi", "create", "-q", "a", "1G"]);
        assert_eq!(c, EXIT_USAGE);
        assert_eq!(
            err,
            "dog: invalid option -- 'q'\nTry 'dog --help' for more information.\n"
        );
        let (c, _, err) = code(&["node", "list", "--bogus"]);
        assert_eq!(c, EXIT_USAGE);
        assert!(err.starts_with("dog: unrecognized option '--bogus'"));
        let (c, _, err) = code(&["vdi", "create", "a", "1G", "-c"]);
        assert_eq!(c, EXIT_USAGE);
        assert!(err.starts_with("dog: option requires an argument -- 'c'"));
        assert_eq!(code(&["node", "list", "-p", "0"]).0, EXIT_USAGE);
        assert_eq!(
            code(&["vdi", "create", "a", "1G", "-c", "0"]).0,
            EXIT_FAILURE
        );
        assert_eq!(
            code(&["vdi", "create", "a", "1G", "-z", "19"]).0,
            EXIT_FAILURE
        );
        assert_eq!(code(&["vdi", "read", "a", "-s", "0"]).0, EXIT_FAILURE);
        // Options of other subcommands are refused.
        assert_eq!(code(&["vdi", "delete", "a", "-P"]).0, EXIT_USAGE);
    }

    #[test]
    fn help_prints_the_subcommand_usage() {
        let (c, out, _) = code(&["vdi", "object", "-h"]);
        assert_eq!(c, 0);
        assert!(
            out.starts_with(
                "Usage: dog vdi object {location|map|dump-inode} [-i index] [-s snapshot] [-a address] \
                 [-p port] [-h] [-T] <vdiname>\nAvailable subcommands:\n  location"
            ),
            "{out}"
        );
        assert!(out.contains("\n  -i, --index             specify the index of data objects\n"));
        let (_, out, _) = code(&["node", "list", "--help"]);
        assert!(out.contains("[--json]"));
        assert!(out.contains("      --json"), "{out}");
    }

    #[test]
    fn copies_like_parse_copy() {
        assert_eq!(parse_copy("3"), Some((3, 0)));
        assert_eq!(parse_copy("31"), Some((31, 0)));
        assert_eq!(parse_copy("32"), None);
        assert_eq!(parse_copy("0"), None);
        assert_eq!(parse_copy("x"), None);
        assert_eq!(parse_copy("4:2"), Some((6, 0x22)));
        assert_eq!(parse_copy("16:15"), Some((31, 0x8f)));
        assert_eq!(parse_copy("3:1"), None);
        assert_eq!(parse_copy("4:0"), None);
        assert_eq!(parse_copy("4:16"), None);
    }
}
