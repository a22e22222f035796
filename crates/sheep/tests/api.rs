//! The HTTP volume API (`/v1`) of real sheep, driven with curl: every endpoint, every error
//! it promises (bad request, no such volume, already exists, locked, no space, cluster not
//! running, missing token), and the rule that a volume made or removed through the API is
//! the same cluster operation as through dog (each sees what the other did, on every node).
//! Also the status page in a real browser (headless Chromium): it shows the nodes and VDIs
//! of a 3-node cluster, and a VDI created with dog appears without a reload.

mod common;

use common::nbd::Client;
use common::{pattern, rt, Cluster};
use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// An answer: HTTP status and the body parsed as JSON (Null when empty).
#[derive(Debug)]
struct Answer {
    status: u16,
    body: Value,
}

/// One request with curl; `body` is sent as JSON.
fn call(port: u16, method: &str, path: &str, body: Option<&str>, token: Option<&str>) -> Answer {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "60", "-X", method])
        .args(["-w", "\n%{http_code}"])
        .arg(format!("http://127.0.0.1:{port}{path}"));
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let o = cmd.output().expect("run curl (apt-get install curl)");
    assert!(
        o.status.success(),
        "curl {method} {path}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let (text, code) = out.rsplit_once('\n').expect("curl's status line");
    let body = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"))
    };
    Answer {
        status: code.trim().parse().expect("status"),
        body,
    }
}

fn get(port: u16, path: &str) -> Answer {
    call(port, "GET", path, None, None)
}

fn post(port: u16, path: &str, body: &str) -> Answer {
    call(port, "POST", path, Some(body), None)
}

/// An error answer with `status` and `code`.
fn assert_error(a: &Answer, status: u16, code: &str) {
    assert_eq!(a.status, status, "{a:?}");
    assert_eq!(a.body["error"], code, "{a:?}");
    assert!(a.body["message"].as_str().is_some_and(|m| !m.is_empty()));
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .expect("a list")
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect()
}

fn qemu_io(uri: &str, cmd: &str) -> std::process::Output {
    Command::new("qemu-io")
        .args(["-f", "raw", "-c", cmd, uri])
        .output()
        .expect("run qemu-io")
}

fn qemu_io_ok(uri: &str, cmd: &str) -> String {
    let o = qemu_io(uri, cmd);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success() && !out.contains("failed"),
        "qemu-io {cmd} {uri}: {out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

#[test]
fn every_endpoint_with_every_error_and_dog_sees_what_the_api_did() {
    let c = Cluster::start(3);
    let port = c.nodes[0].http_port.unwrap();
    let other = c.nodes[2].http_port.unwrap();

    // Not formatted yet: the cluster answers but volumes cannot be made.
    assert_eq!(
        get(port, "/v1/cluster").body["status"],
        "waiting for format"
    );
    let a = post(port, "/v1/volumes", r#"{"name":"Alice","size":1048576}"#);
    assert_error(&a, 503, "CLUSTER_HALTED");

    c.dog_ok(0, &["cluster", "format", "-c", "2"]);
    let cl = get(port, "/v1/cluster");
    assert_eq!(cl.status, 200);
    assert_eq!(cl.body["status"], "running");
    assert_eq!(cl.body["copies"], 2);
    assert_eq!(cl.body["members"].as_array().unwrap().len(), 3);
    assert!(cl.body["epoch"].as_u64().unwrap() >= 1);
    assert!(cl.body["space"]["size"].as_u64().unwrap() > 0);
    let nodes = get(port, "/v1/nodes");
    assert_eq!(nodes.status, 200);
    let nodes = nodes.body.as_array().unwrap().clone();
    assert_eq!(nodes.len(), 3);
    for n in &nodes {
        assert!(n["space"]["size"].as_u64().unwrap() > 0, "{n}");
        assert_eq!(n["recovery"]["running"], false, "{n}");
    }
    assert_eq!(nodes.iter().filter(|n| n["this_node"] == true).count(), 1);
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(n["nbd_port"], c.nodes[i].nbd_port, "{n}");
        assert_eq!(n["http_port"], c.nodes[i].http_port.unwrap(), "{n}");
    }
    // dog node info --json tells the same sizes.
    let info: Value = serde_json::from_str(&c.dog_ok(1, &["node", "info", "--json"])).unwrap();
    assert_eq!(info["total"]["size"], cl.body["space"]["size"], "{info}");
    assert_eq!(info["nodes"].as_array().unwrap().len(), 3, "{info}");
    assert_eq!(
        info["nodes"][0]["size"], nodes[0]["space"]["size"],
        "{info}"
    );

    // Create through the API; dog on another node sees it.
    let a = post(port, "/v1/volumes", r#"{"name":"Alice","size":67108864}"#);
    assert_eq!(a.status, 201, "{a:?}");
    assert_eq!(a.body["name"], "Alice");
    assert_eq!(a.body["size"], 67108864);
    assert_eq!(a.body["copies"], 2);
    let uris: Vec<String> = a.body["attach"]["nbd"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap().to_string())
        .collect();
    assert_eq!(uris.len(), 3, "{a:?}");
    assert!(uris.contains(&c.nbd_uri(0, "Alice")), "{uris:?}");
    let listed = c.dog_ok(2, &["vdi", "list", "-r"]);
    assert!(listed.contains(" Alice 0 67108864 "), "{listed}");
    assert_error(
        &post(other, "/v1/volumes", r#"{"name":"Alice","size":1048576}"#),
        409,
        "ALREADY_EXISTS",
    );

    // Create through dog; the API (of another node) sees it.
    c.dog_ok(1, &["vdi", "create", "Bob", "32M"]);
    let all = get(other, "/v1/volumes");
    assert_eq!(all.status, 200);
    assert_eq!(names(&all.body), ["Alice", "Bob"]);
    let bob = get(port, "/v1/volumes/Bob");
    assert_eq!(bob.status, 200);
    assert_eq!(bob.body["size"], 32 << 20);
    assert_error(&get(port, "/v1/volumes/Nobody"), 404, "NO_SUCH_VOLUME");

    // Bad requests.
    assert_error(
        &post(port, "/v1/volumes", "{not json"),
        400,
        "INVALID_REQUEST",
    );
    assert_error(
        &post(port, "/v1/volumes", r#"{"name":"C"}"#),
        400,
        "INVALID_REQUEST",
    );
    assert_error(
        &post(port, "/v1/volumes", r#"{"name":"C","size":0}"#),
        400,
        "INVALID_REQUEST",
    );
    assert_error(
        &post(
            port,
            "/v1/volumes",
            r#"{"name":"C","size":1,"colour":"red"}"#,
        ),
        400,
        "INVALID_REQUEST",
    );
    let long = format!(r#"{{"name":"{}","size":1048576}}"#, "x".repeat(300));
    assert_error(&post(port, "/v1/volumes", &long), 400, "INVALID_REQUEST");
    assert_error(
        &post(
            port,
            "/v1/volumes",
            r#"{"name":"C","size":1099511627776000}"#,
        ),
        400,
        "INVALID_REQUEST",
    );
    assert_error(&get(port, "/v1/nothing"), 404, "NOT_FOUND");

    // Data through the attach URI, a snapshot through the API, a clone of it.
    let data = pattern(65536, 7);
    qemu_io_ok(&uris[1], "write -P 0x5a 0 64k");
    let s = post(port, "/v1/volumes/Alice/snapshots", r#"{"tag":"first"}"#);
    assert_eq!(s.status, 201, "{s:?}");
    assert_eq!(s.body["tag"], "first");
    assert_eq!(s.body["id"], 1);
    let listed = c.dog_ok(1, &["vdi", "list", "-r"]);
    assert!(listed.contains("s Alice 1 "), "{listed}");
    let snaps = get(other, "/v1/volumes/Alice/snapshots");
    assert_eq!(snaps.status, 200);
    assert_eq!(snaps.body.as_array().unwrap().len(), 1);
    assert_eq!(snaps.body[0]["tag"], "first");
    assert_error(
        &post(port, "/v1/volumes/Alice/snapshots", r#"{"tag":"12"}"#),
        400,
        "INVALID_REQUEST",
    );
    assert_error(
        &post(port, "/v1/volumes/Nobody/snapshots", ""),
        404,
        "NO_SUCH_VOLUME",
    );
    // Writes after the snapshot do not reach it.
    qemu_io_ok(&uris[0], "write -P 0x11 0 64k");
    let clone = post(
        port,
        "/v1/volumes/Alice/clone",
        r#"{"name":"Carol","snapshot":"first"}"#,
    );
    assert_eq!(clone.status, 201, "{clone:?}");
    assert_eq!(clone.body["name"], "Carol");
    assert!(clone.body["parent"].is_string());
    let carol = clone.body["attach"]["nbd"][2].as_str().unwrap().to_string();
    qemu_io_ok(&carol, "read -P 0x5a 0 64k");
    assert_error(
        &post(
            port,
            "/v1/volumes/Alice/clone",
            r#"{"name":"Dave","snapshot":"nosuch"}"#,
        ),
        404,
        "NO_SUCH_VOLUME",
    );
    assert_error(
        &post(
            port,
            "/v1/volumes/Alice/clone",
            r#"{"name":"Carol","snapshot":1}"#,
        ),
        409,
        "ALREADY_EXISTS",
    );
    assert_error(
        &post(
            port,
            "/v1/volumes/Alice/clone",
            r#"{"name":"Dave","snapshot":[]}"#,
        ),
        400,
        "INVALID_REQUEST",
    );

    // Resize: grows, never shrinks.
    let r = post(port, "/v1/volumes/Bob/resize", r#"{"size":134217728}"#);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["size"], 134217728);
    let listed = c.dog_ok(2, &["vdi", "list", "-r", "Bob"]);
    assert!(listed.contains(" Bob 0 134217728 "), "{listed}");
    assert_error(
        &post(port, "/v1/volumes/Bob/resize", r#"{"size":1048576}"#),
        400,
        "INVALID_REQUEST",
    );
    assert_error(
        &post(port, "/v1/volumes/Nobody/resize", r#"{"size":1048576}"#),
        404,
        "NO_SUCH_VOLUME",
    );

    // A writer holds Bob: the listing says who, and it cannot be deleted.
    let rt = rt();
    let nbd_port = c.nodes[1].nbd_port;
    let mut writer = rt.block_on(async {
        let mut w = Client::open(None, nbd_port, "Bob").await.expect("open Bob");
        w.write(0, &data).await.expect("write");
        w
    });
    let bob = get(port, "/v1/volumes/Bob");
    let open_by = bob.body["open_by"].as_array().unwrap();
    assert_eq!(open_by.len(), 1, "{bob:?}");
    assert_eq!(open_by[0]["client"], "nbd 127.0.0.1");
    assert_error(
        &call(port, "DELETE", "/v1/volumes/Bob", None, None),
        409,
        "LOCKED",
    );
    rt.block_on(async {
        writer.flush().await.expect("flush");
        writer.disconnect().await;
    });
    // The lock goes when the writer's connection does (a cluster message away).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let a = call(port, "DELETE", "/v1/volumes/Bob", None, None);
        if a.status == 204 {
            break;
        }
        assert_error(&a, 409, "LOCKED");
        assert!(Instant::now() < deadline, "Bob stayed locked");
        std::thread::sleep(Duration::from_millis(100));
    }
    let listed = c.dog_ok(0, &["vdi", "list", "-r"]);
    assert!(!listed.contains(" Bob "), "{listed}");
    assert_error(
        &call(port, "DELETE", "/v1/volumes/Bob", None, None),
        404,
        "NO_SUCH_VOLUME",
    );
    // Deleted with dog, gone from the API.
    c.dog_ok(1, &["vdi", "delete", "Carol"]);
    assert_eq!(names(&get(other, "/v1/volumes").body), ["Alice"]);

    // The description of all this.
    let spec = get(port, "/v1/openapi.json");
    assert_eq!(spec.status, 200);
    assert_eq!(spec.body["openapi"], "3.0.3");
    let file: Value =
        serde_json::from_str(&std::fs::read_to_string(openapi_file()).unwrap()).unwrap();
    assert_eq!(
        spec.body, file,
        "the served description is the checked-in one"
    );
}

fn openapi_file() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json")
}

#[test]
fn writes_need_the_token_and_a_full_store_answers_no_space() {
    let mut c = Cluster::start_with(0, &[]);
    let token = c.tmp.path().join("token");
    std::fs::write(&token, "t0ken\n").unwrap();
    c.args = vec!["--api-token-file".to_string(), token.display().to_string()];
    // A small disk, filled up by something else.
    c.add_on_tmpfs(0, 64);
    c.wait_members(1);
    c.dog_ok(0, &["cluster", "format", "-c", "1"]);
    let port = c.nodes[0].http_port.unwrap();
    let body = r#"{"name":"Alice","size":1048576}"#;
    assert_error(
        &call(port, "POST", "/v1/volumes", Some(body), None),
        401,
        "UNAUTHORIZED",
    );
    assert_error(
        &call(port, "POST", "/v1/volumes", Some(body), Some("wrong")),
        401,
        "UNAUTHORIZED",
    );
    // Reading needs no token.
    assert_eq!(get(port, "/v1/volumes").body, Value::Array(vec![]));
    let filler = c.nodes[0].dir.join("filler");
    fill(&filler);
    let a = call(port, "POST", "/v1/volumes", Some(body), Some("t0ken"));
    assert_error(&a, 507, "NO_SPACE");
    // Nothing half-made: no volume, for the API and for dog.
    assert_eq!(get(port, "/v1/volumes").body, Value::Array(vec![]));
    let listed = c.dog_ok(0, &["vdi", "list", "-r"]);
    assert!(!listed.contains("Alice"), "{listed}");
    // Room again: the same request succeeds.
    std::fs::remove_file(&filler).unwrap();
    let a = call(port, "POST", "/v1/volumes", Some(body), Some("t0ken"));
    assert_eq!(a.status, 201, "{a:?}");
    assert_eq!(
        call(port, "DELETE", "/v1/volumes/Alice", None, Some("t0ken")).status,
        204
    );
}

const HEADLESS: [&str; 5] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-dev-shm-usage",
];

/// Debian's Chromium; fails loudly where it is missing.
fn chromium() -> &'static str {
    let ok = Command::new("chromium")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "this test needs headless Chromium: apt-get install chromium"
    );
    "chromium"
}

/// Writes `path` until its file system is full.
fn fill(path: &std::path::Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![0x55u8; 1 << 20];
    loop {
        match f.write_all(&block) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    let _ = f.sync_all();
}

/// Headless Chromium's rendering of `url` after its scripts ran for `budget_ms` of virtual
/// time, as HTML.
fn rendered(url: &str, profile: &std::path::Path, budget_ms: u32) -> String {
    let o = Command::new(chromium())
        .args(HEADLESS)
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--virtual-time-budget={budget_ms}"))
        .arg("--dump-dom")
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        o.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn the_status_page_shows_nodes_and_volumes_in_a_real_browser() {
    let c = Cluster::start(3);
    c.dog_ok(0, &["cluster", "format", "-c", "2"]);
    c.dog_ok(0, &["vdi", "create", "Alice", "1G"]);
    let port = c.nodes[1].http_port.unwrap();
    let url = format!("http://127.0.0.1:{port}/");
    let profile = c.tmp.path().join("chromium");
    let dom = rendered(&url, &profile, 3000);
    assert!(dom.contains("running"), "{dom}");
    for n in &c.nodes {
        assert!(
            dom.contains(&format!("data-node=\"127.0.0.1:{}\"", n.port)),
            "node {} missing: {dom}",
            n.port
        );
    }
    assert!(dom.contains("data-volume=\"Alice\""), "{dom}");
    assert!(dom.contains("1.0 GiB"), "{dom}");
    assert!(!dom.contains("data-volume=\"Bob\""), "{dom}");

    // A page that stays open picks up a VDI created with dog, without a reload: Chromium
    // keeps the page open (real time, as dog changes the cluster meanwhile) and its DevTools
    // endpoint tells the page's title, which the page redraws with every refresh.
    let debug = common::free_port();
    let mut browser = Command::new(chromium())
        .args(HEADLESS)
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--remote-debugging-port={debug}"))
        .arg(&url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run chromium");
    let seen = (|| {
        let before = wait_title(debug, |t| t.ends_with("3 nodes, 1 volumes"))?;
        c.dog_ok(2, &["vdi", "create", "Bob", "64M"]);
        let after = wait_title(debug, |t| t.ends_with("3 nodes, 2 volumes"))?;
        Ok::<_, String>((before, after))
    })();
    let _ = browser.kill();
    let _ = browser.wait();
    let (before, after) = seen.unwrap();
    assert_eq!(before.1, after.1, "the same page, not reloaded elsewhere");
    assert_eq!(after.0, "Sheepdog: running, 3 nodes, 2 volumes");
}

/// The (title, url) of the first page Chromium shows, once `want` holds of the title.
fn wait_title(debug: u16, want: impl Fn(&str) -> bool) -> Result<(String, String), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::from("no answer from Chromium's DevTools endpoint");
    while Instant::now() < deadline {
        let o = Command::new("curl")
            .args(["-sS", "--max-time", "5"])
            .arg(format!("http://127.0.0.1:{debug}/json/list"))
            .output()
            .expect("run curl");
        if let Ok(list) = serde_json::from_slice::<Value>(&o.stdout) {
            let page = list
                .as_array()
                .and_then(|l| l.iter().find(|t| t["type"] == "page"));
            if let Some(p) = page {
                let title = p["title"].as_str().unwrap_or_default().to_string();
                if want(&title) {
                    return Ok((title, p["url"].as_str().unwrap_or_default().to_string()));
                }
                last = format!("title: {title:?}");
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(last)
}
