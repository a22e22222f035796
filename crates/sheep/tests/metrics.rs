//! `/metrics` of real sheep scraped over HTTP: the request counters of the Sheepdog protocol,
//! of NBD and of peers move as requests are made, bytes written and read grow by what was
//! moved, errors are counted by result code, the state gauges (epoch, members, store, space,
//! recovery) follow the cluster, and the text is the Prometheus exposition format. Also the
//! HTTP listener's port rule (`--http-port`, its default, 0 for none) and its access rule.

mod common;

use common::nbd::Client;
use common::{fio_ok, fio_randwrite, free_port, pattern, rt, Cluster, Sheep};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// An HTTP answer: status code, headers (lower-case names), body.
struct Answer {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

/// One HTTP/1.1 request on a fresh connection (closed after the answer).
fn http(port: u16, method: &str, path: &str, extra: &[(&str, &str)]) -> std::io::Result<Answer> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("Content-Length: 0\r\n\r\n");
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body = if headers
        .get("transfer-encoding")
        .is_some_and(|t| t == "chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok(Answer {
        status,
        headers,
        body,
    })
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

/// Samples of a scrape: `name{labels}` -> value, after checking that every line is a comment
/// or `name{labels} value` (the Prometheus/OpenMetrics text format) and every sample's family
/// has its HELP and TYPE.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    let mut typed = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.last(),
        Some(&"# EOF"),
        "the exposition ends with # EOF"
    );
    for line in &lines {
        if let Some(c) = line.strip_prefix("# ") {
            let mut w = c.split_whitespace();
            match w.next() {
                Some("TYPE") => typed.push(w.next().expect("TYPE name").to_string()),
                Some("HELP") | Some("UNIT") | Some("EOF") => {}
                other => panic!("unknown comment {other:?} in {line:?}"),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !name.starts_with(|c: char| c.is_ascii_digit()),
            "bad metric name in {line:?}"
        );
        if name_end < series.len() {
            let labels = &series[name_end..];
            assert!(labels.ends_with('}'), "{line:?}");
            for pair in split_labels(&labels[1..labels.len() - 1]) {
                let (k, v) = pair.split_once('=').unwrap_or_else(|| panic!("{line:?}"));
                assert!(
                    !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "bad label name in {line:?}"
                );
                assert!(
                    v.len() >= 2 && v.starts_with('"') && v.ends_with('"'),
                    "bad label value in {line:?}"
                );
            }
        }
        let v: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let family_typed = typed.iter().any(|t| name.starts_with(t.as_str()));
        assert!(family_typed, "{line:?} has no # TYPE before it");
        samples.insert(series.to_string(), v);
    }
    samples
}

/// `k="v",k2="v2"` split at the commas outside quotes.
fn split_labels(s: &str) -> Vec<&str> {
    let (mut out, mut start, mut quoted, mut escaped) = (Vec::new(), 0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < s.len() {
        out.push(&s[start..]);
    }
    out
}

/// The samples of node `i`'s `/metrics`.
fn scrape(c: &Cluster, i: usize) -> BTreeMap<String, f64> {
    let port = c.nodes[i].http_port.expect("an HTTP port");
    let a = http(port, "GET", "/metrics", &[]).expect("scrape");
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(
        a.headers
            .get("content-type")
            .is_some_and(|t| t.starts_with("application/openmetrics-text")),
        "{:?}",
        a.headers
    );
    parse(&a.body)
}

fn get(m: &BTreeMap<String, f64>, series: &str) -> f64 {
    m.get(series).copied().unwrap_or(0.0)
}

fn requests(protocol: &str, op: &str) -> String {
    format!(r#"sheep_requests_total{{protocol="{protocol}",op="{op}"}}"#)
}

fn bytes(dir: &str, protocol: &str) -> String {
    format!(r#"sheep_{dir}_bytes_total{{protocol="{protocol}"}}"#)
}

/// The newest epoch `dog cluster info` lists.
fn dog_epoch(c: &Cluster, i: usize) -> f64 {
    let info = c.dog_ok(i, &["cluster", "info"]);
    let row = info
        .lines()
        .skip_while(|l| !l.starts_with("Epoch"))
        .nth(1)
        .unwrap_or_else(|| panic!("no epoch rows in {info}"));
    let words: Vec<&str> = row.split_whitespace().collect();
    let at = words.iter().position(|w| w.starts_with('[')).expect(row);
    words[at - 1].parse().expect(row)
}

#[test]
fn counters_move_with_requests_of_every_protocol_and_gauges_follow_the_cluster() {
    let mut c = Cluster::start(3);
    c.dog_ok(0, &["cluster", "format", "--copies=3"]);
    let before: Vec<_> = (0..3).map(|i| scrape(&c, i)).collect();
    c.dog_ok(0, &["vdi", "create", "Alice", "64M"]);

    // A write and a read over the Sheepdog protocol, through node 0.
    let data = pattern(1 << 20, 7);
    let file = c.tmp.path().join("data");
    std::fs::write(&file, &data).unwrap();
    let o = c.dog_stdin(0, &["vdi", "write", "Alice"], Some(&file));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = c.dog(0, &["vdi", "read", "Alice", "0", "1M"]);
    assert!(o.status.success() && o.stdout == data);
    // An error: the name exists.
    assert!(!c
        .dog(0, &["vdi", "create", "Alice", "64M"])
        .status
        .success());

    // A write, a read and a flush over NBD, through node 1.
    let nbd_port = c.nodes[1].nbd_port;
    let during = rt().block_on(async {
        let mut n = Client::open(None, nbd_port, "Alice").await.expect("open");
        n.write(4 << 20, &pattern(65536, 9)).await.expect("write");
        assert_eq!(
            n.read(4 << 20, 65536).await.expect("read"),
            pattern(65536, 9)
        );
        n.flush().await.expect("flush");
        let during = scrape(&c, 1);
        n.disconnect().await;
        during
    });
    let after: Vec<_> = (0..3).map(|i| scrape(&c, i)).collect();
    let grew = |i: usize, series: &str| get(&after[i], series) - get(&before[i], series);

    // Node 0 was the Sheepdog gateway.
    assert_eq!(grew(0, &requests("sheepdog", "NEW_VDI")), 2.0);
    assert!(
        grew(0, &requests("sheepdog", "WRITE_OBJ"))
            + grew(0, &requests("sheepdog", "CREATE_AND_WRITE_OBJ"))
            >= 1.0
    );
    assert!(grew(0, &requests("sheepdog", "READ_OBJ")) >= 1.0);
    assert!(grew(0, &bytes("written", "sheepdog")) >= (1 << 20) as f64);
    assert!(grew(0, &bytes("read", "sheepdog")) >= (1 << 20) as f64);
    assert_eq!(
        grew(
            0,
            r#"sheep_request_errors_total{protocol="sheepdog",op="NEW_VDI",result="VDI_EXIST"}"#
        ),
        1.0
    );
    assert!(
        grew(
            0,
            r#"sheep_request_duration_seconds_count{protocol="sheepdog",op="READ_OBJ"}"#
        ) >= 1.0
    );
    let buckets = after[0]
        .iter()
        .filter(|(k, _)| {
            k.starts_with("sheep_request_duration_seconds_bucket{")
                && k.contains(r#"op="READ_OBJ""#)
        })
        .count();
    assert_eq!(buckets, 21, "20 latency buckets and +Inf");

    // Node 1 served NBD: exactly the one client's requests and bytes.
    for op in ["WRITE", "READ", "FLUSH"] {
        assert_eq!(grew(1, &requests("nbd", op)), 1.0, "nbd {op}");
    }
    assert_eq!(grew(1, &bytes("written", "nbd")), 65536.0);
    assert_eq!(grew(1, &bytes("read", "nbd")), 65536.0);
    assert_eq!(
        get(&during, r#"sheep_connections_open{listener="nbd"}"#),
        1.0
    );
    assert!(grew(1, r#"sheep_connections_total{listener="nbd"}"#) >= 1.0);

    // Every node holds a copy of every object (3 copies on 3 nodes): nodes 1 and 2 took the
    // copies of node 0's writes as peers, node 2 also those of node 1's.
    for i in [1, 2] {
        let peer_writes = grew(i, &requests("peer", "WRITE_PEER"))
            + grew(i, &requests("peer", "CREATE_AND_WRITE_PEER"));
        assert!(peer_writes >= 1.0, "node {i}: {peer_writes} peer writes");
    }
    assert!(grew(1, &bytes("written", "peer")) >= (1 << 20) as f64);
    assert!(grew(2, &bytes("written", "peer")) >= ((1 << 20) + 65536) as f64);
    assert_eq!(grew(0, &bytes("written", "nbd")), 0.0);

    // State: the same epoch as dog says, three members, the objects on every node.
    let epoch = dog_epoch(&c, 0);
    assert!(epoch >= 1.0);
    for (i, m) in after.iter().enumerate() {
        assert_eq!(get(m, "sheep_epoch"), epoch, "node {i}");
        assert_eq!(get(m, "sheep_members"), 3.0, "node {i}");
        assert_eq!(get(m, "sheep_cluster_ok"), 1.0, "node {i}");
        // The inode and at least two data objects (0 and 1).
        assert!(get(m, "sheep_store_objects") >= 3.0, "node {i}");
        assert!(
            get(m, "sheep_store_bytes") >= ((1 << 20) + 65536) as f64,
            "node {i}"
        );
        let (size, free) = (
            get(m, "sheep_disk_size_bytes"),
            get(m, "sheep_disk_free_bytes"),
        );
        assert!(
            size > 0.0 && free > 0.0 && free <= size,
            "node {i}: {size} {free}"
        );
        assert_eq!(get(m, "sheep_stale_copies"), 0.0, "node {i}");
        assert!(m.contains_key("sheep_recovery_objects_done"), "node {i}");
        assert!(
            m.contains_key(r#"sheep_requests_in_flight{protocol="sheepdog"}"#),
            "node {i}"
        );
        assert!(
            m.contains_key(r#"sheep_build_info{version="0.1.0"}"#),
            "node {i}"
        );
    }
    assert_eq!(
        get(&after[0], "sheep_store_objects"),
        get(&after[2], "sheep_store_objects")
    );

    // The README's list and the sample dashboard name metrics that exist.
    let names: std::collections::BTreeSet<&str> = after
        .iter()
        .flat_map(|m| m.keys())
        .map(|k| k.split('{').next().unwrap())
        .collect();
    let exists = |n: &str| names.iter().any(|have| have.starts_with(n));
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("contrib/grafana-sheepdog.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let mut used = 0;
    for p in dash["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().expect("targets") {
            let expr = t["expr"].as_str().expect("expr");
            for name in metric_names(expr) {
                assert!(names.contains(name), "the dashboard's {name} is not served");
                used += 1;
            }
        }
    }
    assert!(used >= 16, "{used}");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let section = readme
        .split("## Metrics")
        .nth(1)
        .expect("a Metrics section");
    let section = section.split("\n## ").next().unwrap();
    let listed = metric_names(section);
    assert!(listed.len() >= 19, "{listed:?}");
    for name in listed {
        assert!(exists(name), "the README's {name} is not served");
    }

    // Under load: a scrape taken while fio writes shows the writes counted.
    let uri = c.nbd_uri(2, "Alice");
    let start = get(&scrape(&c, 2), &requests("nbd", "WRITE"));
    let mut fio = fio_randwrite(&c, &uri, "4k", "48M");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen_running = None;
    while Instant::now() < deadline {
        let now = get(&scrape(&c, 2), &requests("nbd", "WRITE"));
        if fio.try_wait().expect("fio").is_some() {
            break;
        }
        if now > start {
            seen_running = Some(now);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        seen_running.is_some(),
        "no scrape saw fio's writes while it ran"
    );
    fio_ok(fio);
    let end = scrape(&c, 2);
    // Every 4 KiB block of the 48 MiB once (fio's random map), and its verification reads.
    assert!(get(&end, &requests("nbd", "WRITE")) - start >= 12288.0);
    assert!(get(&end, &bytes("written", "nbd")) >= (48 << 20) as f64);
    assert!(seen_running.unwrap() < get(&end, &requests("nbd", "WRITE")));

    // A node leaves: a new epoch with two members, and recovery of it reported.
    c.kill(2);
    c.wait_members(2);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = scrape(&c, 0);
        let settled = get(&m, "sheep_members") == 2.0
            && get(&m, "sheep_epoch") == epoch + 1.0
            && get(&m, "sheep_recovery_epoch") == epoch + 1.0
            && get(&m, "sheep_recovery_running") == 0.0;
        if settled {
            assert!(
                get(&m, "sheep_recovery_objects_done") <= get(&m, "sheep_recovery_objects_planned")
            );
            break;
        }
        assert!(Instant::now() < deadline, "node 0 after the kill: {m:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(dog_epoch(&c, 0), epoch + 1.0);
}

/// The `sheep_...` words of `text`.
fn metric_names(text: &str) -> Vec<&str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("sheep_"))
        .collect()
}

/// TCP ports process `pid` listens on (its sockets in /proc/net/tcp{,6} in state LISTEN),
/// with their local address.
fn listening(pid: u32) -> Vec<(String, u16)> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the sheep's fds")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9 && f[3] == "0A" && inodes.iter().any(|i| i == f[9]) {
                let (addr, port) = f[1].split_once(':').expect("local address");
                out.push((
                    addr.to_string(),
                    u16::from_str_radix(port, 16).expect("port"),
                ));
            }
        }
    }
    out.sort();
    out
}

fn pid(c: &Cluster, i: usize) -> u32 {
    c.nodes[i].child.as_ref().expect("running").id()
}

#[test]
fn the_http_port_follows_its_rule_and_zero_turns_it_off() {
    // --http-port 0: the sheep listens on its Sheepdog and NBD ports only.
    let off = Cluster::start_with(1, &["--http-port", "0"]);
    let ports: Vec<u16> = listening(pid(&off, 0))
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    let mut want = vec![off.port(0), off.nodes[0].nbd_port];
    want.sort();
    assert_eq!(ports, want);
    drop(off);

    // Given: where it is asked, on the same address as the other listeners (-b's default).
    let on = Cluster::start(1);
    let http_port = on.nodes[0].http_port.expect("given");
    let socks = listening(pid(&on, 0));
    assert_eq!(socks.len(), 3, "{socks:?}");
    assert!(socks.iter().any(|(_, p)| *p == http_port), "{socks:?}");
    assert!(
        socks.iter().all(|(a, _)| *a == socks[0].0),
        "one address for all: {socks:?}"
    );
    assert_eq!(
        socks[0].0, "0100007F",
        "127.0.0.1 when no -b or -y is given"
    );
    drop(on);

    // Not given: the Sheepdog port plus 1000. A Sheepdog port whose HTTP port is free.
    let mut c = Cluster::start_with(0, &[]);
    let port = (0..100)
        .map(|_| free_port())
        .find(|&p| p <= 64535 && std::net::TcpListener::bind(("127.0.0.1", p + 1000)).is_ok())
        .expect("a free pair of ports");
    c.nodes.push(Sheep {
        port,
        nbd_port: free_port(),
        http_port: None,
        zone: 0,
        dir: c.tmp.path().join("st0"),
        disks: Vec::new(),
        child: None,
    });
    c.restart(0);
    c.wait_members(1);
    let a = http(port + 1000, "GET", "/metrics", &[]).expect("the default HTTP port");
    assert_eq!(a.status, 200);
    assert_eq!(parse(&a.body).get("sheep_members"), Some(&1.0));
    assert!(listening(pid(&c, 0)).iter().any(|(_, p)| *p == port + 1000));
}

#[test]
fn reading_is_open_and_changing_needs_the_token_or_loopback() {
    // No token: loopback clients pass the rule (and find no such method on /metrics).
    let open = Cluster::start(1);
    let port = open.nodes[0].http_port.unwrap();
    assert_eq!(http(port, "POST", "/metrics", &[]).unwrap().status, 405);
    let missing = http(port, "GET", "/nothing", &[]).unwrap();
    assert_eq!(missing.status, 404);
    assert!(
        missing.body.contains(r#""error":"NOT_FOUND""#),
        "{}",
        missing.body
    );
    drop(open);

    // A token: reading needs none, changing needs it, from loopback too.
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "tok-3141\n").unwrap();
    let c = Cluster::start_with(1, &["--api-token-file", token.to_str().unwrap()]);
    let port = c.nodes[0].http_port.unwrap();
    assert_eq!(http(port, "GET", "/metrics", &[]).unwrap().status, 200);
    let refused = http(port, "POST", "/metrics", &[]).unwrap();
    assert_eq!(refused.status, 401);
    assert_eq!(
        refused.headers.get("www-authenticate").map(String::as_str),
        Some("Bearer")
    );
    assert!(
        refused.body.contains(r#""error":"UNAUTHORIZED""#),
        "{}",
        refused.body
    );
    let wrong = http(
        port,
        "DELETE",
        "/metrics",
        &[("Authorization", "Bearer tok-314")],
    )
    .unwrap();
    assert_eq!(wrong.status, 401);
    let right = http(
        port,
        "POST",
        "/metrics",
        &[("Authorization", "Bearer tok-3141")],
    )
    .unwrap();
    assert_eq!(right.status, 405, "past the rule: /metrics takes GET only");
    // The scrapes and refusals were counted as HTTP connections.
    let m = scrape(&c, 0);
    assert!(get(&m, r#"sheep_connections_total{listener="http"}"#) >= 4.0);
    assert_eq!(get(&m, r#"sheep_connections_open{listener="http"}"#), 1.0);
}

#[test]
fn a_token_file_that_cannot_be_read_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let o = std::process::Command::new(common::bin("sheep"))
        .args([
            "-f",
            "-p",
            &free_port().to_string(),
            "--nbd-port",
            "0",
            "--http-port",
        ])
        .arg(free_port().to_string())
        .arg("--api-token-file")
        .arg(dir.path().join("missing"))
        .arg(dir.path().join("st"))
        .output()
        .expect("run sheep");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("API token file"), "{err}");
}
