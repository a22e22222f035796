//! A cluster that crashed comes back whatever the order its nodes start in: the scenarios of the
//! original's functional tests 001-004 (master transfer after crashes), 060 (reboot without
//! shutdown), 069 (a joiner with another cluster's newer epoch) and 074 (copies=1, nodes
//! stopped in turn and started in the reverse order), and `recover force` followed by the
//! return of a node with newer copies. Each writes data with dog, crashes and restarts as its
//! scenario says, then checks that the cluster runs again, that every node shows the same epoch
//! history, that every block reads back through every node, and that `vdi check` finds every
//! object.

mod common;

use common::store::wait_recovered;
use common::{pattern, Cluster};
use std::time::{Duration, Instant};

const MB: usize = 1 << 20;

/// The bytes a VDI should hold, written piece by piece through dog.
struct Vdi {
    name: String,
    data: Vec<u8>,
}

impl Vdi {
    /// `dog vdi create NAME SIZE` through node `i`.
    fn create(c: &Cluster, i: usize, name: &str, size: usize) -> Vdi {
        c.dog_ok(i, &["vdi", "create", name, &format!("{}M", size / MB)]);
        Vdi {
            name: name.into(),
            data: vec![0; size],
        }
    }

    /// `dog vdi write NAME OFFSET LEN` through node `i` with pattern `seed`.
    fn write(&mut self, c: &Cluster, i: usize, offset: usize, len: usize, seed: u64) {
        let bytes = pattern(len, seed);
        let input = c.tmp.path().join(format!("in-{}-{seed}", self.name));
        std::fs::write(&input, &bytes).unwrap();
        let o = c.dog_stdin(
            i,
            &[
                "vdi",
                "write",
                &self.name,
                &offset.to_string(),
                &len.to_string(),
            ],
            Some(&input),
        );
        assert!(
            o.status.success(),
            "write of {} through node {i}: {}",
            self.name,
            String::from_utf8_lossy(&o.stderr)
        );
        self.data[offset..offset + len].copy_from_slice(&bytes);
    }

    /// Every block reads back as written through node `i`.
    fn check(&self, c: &Cluster, i: usize) {
        let o = c.dog(i, &["vdi", "read", &self.name]);
        assert!(
            o.status.success(),
            "read of {} through node {i}: {}",
            self.name,
            String::from_utf8_lossy(&o.stderr)
        );
        if let Some(k) = first_diff(&o.stdout, &self.data) {
            panic!(
                "{} through node {i}: block {k} (4 KiB) differs from what was written",
                self.name
            );
        }
    }
}

fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    if a.len() != b.len() {
        return Some(a.len().min(b.len()) / 4096);
    }
    (0..a.len() / 4096).find(|&k| a[k * 4096..(k + 1) * 4096] != b[k * 4096..(k + 1) * 4096])
}

fn running(c: &Cluster) -> Vec<usize> {
    (0..c.nodes.len())
        .filter(|&i| c.nodes[i].child.is_some())
        .collect()
}

/// `dog cluster info` of node `i`, stdout only.
fn info(c: &Cluster, i: usize) -> String {
    String::from_utf8_lossy(&c.dog(i, &["cluster", "info"]).stdout).into_owned()
}

/// The epoch history node `i` shows (`dog cluster info -r`), newest first, as (epoch, the
/// indexes of its members in the harness).
fn history(c: &Cluster, i: usize) -> Vec<(u32, Vec<usize>)> {
    let out = c.dog_ok(i, &["cluster", "info", "-r"]);
    out.lines()
        .filter_map(|l| {
            let (head, rest) = l.split_once('[')?;
            let epoch = head.split_whitespace().nth(1)?.parse().ok()?;
            let mut members: Vec<usize> = rest
                .trim_end_matches(']')
                .split(", ")
                .filter(|m| !m.is_empty())
                .map(|m| {
                    let port: u16 = m.split(':').nth(1).and_then(|p| p.parse().ok()).unwrap();
                    (0..c.nodes.len())
                        .find(|&k| c.port(k) == port)
                        .expect("a node of the harness")
                })
                .collect();
            members.sort_unstable();
            Some((epoch, members))
        })
        .collect()
}

/// Waits (bounded) until every running node says the cluster is running.
fn wait_running(c: &Cluster) {
    let deadline = Instant::now() + Duration::from_secs(90);
    for i in running(c) {
        loop {
            let s = info(c, i);
            if s.starts_with("Cluster status: running") {
                break;
            }
            assert!(Instant::now() < deadline, "node {i} does not run:\n{s}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Node `i` waits for the members of the last epoch, with `joined` nodes back: dog says so in
/// the original's words, and lists the nodes that joined.
fn assert_waiting(c: &Cluster, i: usize, joined: usize) {
    c.wait_members(joined);
    let s = info(c, i);
    assert!(
        s.starts_with("Cluster status: Waiting for other nodes to join cluster"),
        "node {i} with {joined} nodes back:\n{s}"
    );
    let list = c.dog_ok(i, &["node", "list"]);
    assert_eq!(list.lines().count(), joined + 1, "{list}");
    let o = c.dog(i, &["vdi", "read", "Alice", "0", "4096"]);
    assert!(!o.status.success(), "a VDI served while waiting");
}

/// The cluster is back: it runs, recovery ends with `copies` copies of every object, every
/// node shows the same epoch history (`want`, if given), every VDI reads back through every
/// node, and `vdi check` finds nothing missing.
fn assert_back(c: &Cluster, copies: usize, vdis: &[&Vdi], want: Option<&[(u32, Vec<usize>)]>) {
    wait_running(c);
    wait_recovered(c, copies);
    let live = running(c);
    for v in vdis {
        for &i in &live {
            v.check(c, i);
        }
        let o = c.dog(live[0], &["vdi", "check", &v.name]);
        let (out, err) = (
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
        );
        assert!(o.status.success(), "vdi check {}: {out}{err}", v.name);
        assert!(!err.contains("no copy"), "vdi check {}: {err}", v.name);
        assert!(
            out.contains(&format!("finish check&repair {}", v.name)),
            "{out}"
        );
    }
    let first = history(c, live[0]);
    if let Some(w) = want {
        assert_eq!(first, w, "epoch history of node {}", live[0]);
    }
    let text = info(c, live[0]);
    for &i in &live[1..] {
        assert_eq!(history(c, i), first, "epoch history of node {i}");
        assert_eq!(info(c, i), text, "cluster info of node {i}");
    }
}

/// kill -9 of `i`, then the others see it gone.
fn kill(c: &mut Cluster, i: usize) {
    c.kill(i);
    c.wait_members(running(c).len());
}

fn h(list: &[(u32, &[usize])]) -> Vec<(u32, Vec<usize>)> {
    list.iter().map(|(e, m)| (*e, m.to_vec())).collect()
}

/// 001: the first node dies, another joins, then every node dies one after the other; they
/// come back in their start order, the oldest first. Each epoch took writes.
#[test]
fn master_transfer_after_crashes() {
    let mut c = Cluster::start(2);
    c.dog_ok(0, &["cluster", "format", "--copies=2"]);
    let mut a = Vdi::create(&c, 0, "Alice", 16 * MB);
    a.write(&c, 0, 0, 16 * MB, 1);
    kill(&mut c, 0);
    a.write(&c, 1, 0, 4 * MB, 2);
    c.add(2);
    c.wait_members(2);
    wait_recovered(&c, 2);
    a.write(&c, 2, 4 * MB, 4 * MB, 3);
    kill(&mut c, 1);
    // Node 2 alone (epoch 4) has the newest bytes.
    a.write(&c, 2, 6 * MB, 6 * MB, 4);
    kill(&mut c, 2);

    c.restart(0);
    assert_waiting(&c, 0, 1);
    c.restart(1);
    assert_waiting(&c, 0, 2);
    assert_waiting(&c, 1, 2);
    c.restart(2);
    c.wait_members(3);
    assert_back(
        &c,
        2,
        &[&a],
        Some(&h(&[
            (5, &[0, 1, 2]),
            (4, &[2]),
            (3, &[1, 2]),
            (2, &[1]),
            (1, &[0, 1]),
        ])),
    );
}

/// 002 and 003: three nodes die one after the other and come back in another order, twice
/// (the last one to die, which alone has the newest bytes, comes back last).
#[test]
fn a_crashed_cluster_comes_back_whatever_the_start_order() {
    let mut c = Cluster::start(3);
    c.dog_ok(0, &["cluster", "format", "--copies=3"]);
    let mut a = Vdi::create(&c, 0, "Alice", 12 * MB);
    a.write(&c, 0, 0, 12 * MB, 11);
    for (round, order) in [[1, 0, 2], [0, 1, 2]].iter().enumerate() {
        let seed = 20 + 10 * round as u64;
        kill(&mut c, 0);
        a.write(&c, 1, 0, 5 * MB, seed);
        kill(&mut c, 1);
        a.write(&c, 2, 3 * MB, 6 * MB, seed + 1);
        kill(&mut c, 2);
        for (k, &i) in order.iter().enumerate() {
            c.restart(i);
            if k < 2 {
                assert_waiting(&c, order[0], k + 1);
            }
        }
        c.wait_members(3);
        assert_back(&c, 3, &[&a], None);
    }
    let e = history(&c, 0);
    assert_eq!(
        e,
        h(&[
            (7, &[0, 1, 2]),
            (6, &[2]),
            (5, &[1, 2]),
            (4, &[0, 1, 2]),
            (3, &[2]),
            (2, &[1, 2]),
            (1, &[0, 1, 2]),
        ])
    );
}

/// 004: two nodes; three times one dies and a new one takes its place; the last two die, and
/// all five come back, the oldest first.
#[test]
fn nodes_replaced_one_at_a_time_then_all_five_back() {
    let mut c = Cluster::start(2);
    c.dog_ok(0, &["cluster", "format", "--copies=2"]);
    let mut a = Vdi::create(&c, 0, "Alice", 12 * MB);
    a.write(&c, 0, 0, 12 * MB, 41);
    for i in 2..5 {
        wait_recovered(&c, 2);
        kill(&mut c, i - 2);
        a.write(&c, i - 1, (i - 2) * 3 * MB, 3 * MB, 40 + i as u64);
        c.add(i as u32);
        c.wait_members(2);
    }
    wait_recovered(&c, 2);
    kill(&mut c, 3);
    a.write(&c, 4, 2 * MB, 4 * MB, 49);
    kill(&mut c, 4);
    for i in 0..5 {
        c.restart(i);
        if i < 4 {
            assert_waiting(&c, 0, i + 1);
        }
    }
    c.wait_members(5);
    assert_back(
        &c,
        2,
        &[&a],
        Some(&h(&[
            (9, &[0, 1, 2, 3, 4]),
            (8, &[4]),
            (7, &[3, 4]),
            (6, &[3]),
            (5, &[2, 3]),
            (4, &[2]),
            (3, &[1, 2]),
            (2, &[1]),
            (1, &[0, 1]),
        ])),
    );
}

/// 060: every node killed at once and started again (in another order each time), three
/// times, with four VDIs written by concurrent writers first.
#[test]
fn reboot_without_shutdown() {
    let n = 5;
    let mut c = Cluster::start(n);
    c.dog_ok(0, &["cluster", "format", "--copies=3"]);
    let mut vdis: Vec<Vdi> = (0..4)
        .map(|k| Vdi::create(&c, k % n, &format!("test{k}"), 12 * MB))
        .collect();
    // Four writers at once, one per VDI, through different nodes.
    let writers: Vec<std::process::Child> = vdis
        .iter_mut()
        .enumerate()
        .map(|(k, v)| {
            let bytes = pattern(12 * MB, 60 + k as u64);
            let input = c.tmp.path().join(format!("w{k}"));
            std::fs::write(&input, &bytes).unwrap();
            v.data.copy_from_slice(&bytes);
            std::process::Command::new(common::bin("dog"))
                .args(["vdi", "write", &v.name, "-p", &c.port(k % n).to_string()])
                .stdin(std::fs::File::open(&input).unwrap())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut w in writers {
        assert!(w.wait().unwrap().success());
    }
    for order in [[0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [2, 4, 0, 3, 1]] {
        kill_all(&mut c);
        for i in order {
            c.restart(i);
        }
        c.wait_members(n);
        assert_back(&c, 3, &vdis.iter().collect::<Vec<_>>(), None);
    }
}

/// kill -9 of every node at once.
fn kill_all(c: &mut Cluster) {
    let mut children: Vec<std::process::Child> =
        c.nodes.iter_mut().filter_map(|n| n.child.take()).collect();
    for ch in &mut children {
        let _ = ch.kill();
    }
    for mut ch in children {
        let _ = ch.wait();
    }
}

/// 069: a node of an earlier format of the cluster, with a newer epoch, is refused by a
/// cluster that waits for its members, and does not stop it from starting.
#[test]
fn a_joiner_formatted_at_another_time_with_a_newer_epoch_is_refused() {
    let mut c = Cluster::start(3);
    c.dog_ok(0, &["cluster", "format"]);
    kill(&mut c, 0);
    // Node 2 keeps epoch 2 of that format.
    c.dog_ok(1, &["cluster", "shutdown"]);
    c.wait_exit(1);
    c.wait_exit(2);
    std::fs::remove_dir_all(&c.nodes[0].dir).unwrap();
    std::fs::remove_dir_all(&c.nodes[1].dir).unwrap();
    c.restart(0);
    c.restart(1);
    c.wait_members(2);
    c.dog_ok(0, &["cluster", "format", "--copies=2"]);
    let mut a = Vdi::create(&c, 0, "Alice", 8 * MB);
    a.write(&c, 1, 0, 8 * MB, 69);
    c.dog_ok(0, &["cluster", "shutdown"]);
    c.wait_exit(0);
    c.wait_exit(1);

    c.restart(0);
    assert_waiting(&c, 0, 1);
    // Node 2 fails to join: it was formatted at another time.
    let err = c.tmp.path().join("sheep2.err");
    let start = {
        let n = &c.nodes[2];
        std::process::Command::new(common::bin("sheep"))
            .args(["-f", "-c", &format!("local:{}", c.shm.display())])
            .args(["-p", &n.port.to_string(), "-z", "2"])
            .args(["--nbd-port", &n.nbd_port.to_string()])
            .arg(&n.dir)
            .stderr(std::fs::File::create(&err).unwrap())
            .status()
            .unwrap()
    };
    assert!(!start.success(), "a sheep of another format joined");
    let log = std::fs::read_to_string(&err).unwrap();
    assert!(log.contains("another cluster"), "{log}");
    assert_waiting(&c, 0, 1);
    c.restart(1);
    c.wait_members(2);
    assert_back(&c, 2, &[&a], Some(&h(&[(1, &[0, 1])])));
    // Formatting through node 1 starts a new history with both nodes.
    c.dog_ok(1, &["cluster", "format", "--copies=2", "-f"]);
    assert_eq!(history(&c, 1), h(&[(1, &[0, 1])]));
}

/// A node that stopped before the last epoch comes back first: the cluster waits for the
/// members of the newest epoch it learns of, then takes the old node in as a returning one,
/// whose copies are set aside and never served.
#[test]
fn a_node_of_an_older_epoch_starting_first_is_taken_in_as_a_returning_node() {
    let mut c = Cluster::start(3);
    c.dog_ok(0, &["cluster", "format", "--copies=2"]);
    let mut a = Vdi::create(&c, 0, "Alice", 12 * MB);
    a.write(&c, 0, 0, 12 * MB, 71);
    wait_recovered(&c, 2);
    kill(&mut c, 2);
    a.write(&c, 0, 0, 12 * MB, 72);
    wait_recovered(&c, 2);
    kill(&mut c, 0);
    a.write(&c, 1, 4 * MB, 4 * MB, 73);
    kill(&mut c, 1);
    // Node 2 (epoch 1) first: it waits for epoch 1's members; node 0 (epoch 2) makes it
    // wait for node 1; node 1 (epoch 3) alone decides.
    c.restart(2);
    assert_waiting(&c, 2, 1);
    c.restart(0);
    assert_waiting(&c, 2, 2);
    c.restart(1);
    c.wait_members(3);
    assert_back(
        &c,
        2,
        &[&a],
        Some(&h(&[
            (4, &[0, 1, 2]),
            (3, &[1]),
            (2, &[0, 1]),
            (1, &[0, 1, 2]),
        ])),
    );
}

/// 074: one copy of each object; the nodes stop one after the other and start again in the
/// reverse order, each start waiting for recovery: nothing the later nodes hold is purged by
/// the recovery of the first ones back.
#[test]
fn copies_1_nodes_stopped_in_turn_and_started_in_reverse() {
    let mut c = Cluster::start(3);
    c.dog_ok(0, &["cluster", "format", "--copies=1"]);
    let mut vdis: Vec<Vdi> = (0..6)
        .map(|k| Vdi::create(&c, 0, &format!("test{k}"), 16 * MB))
        .collect();
    for (k, v) in vdis.iter_mut().enumerate() {
        v.write(&c, 0, 0, 16 * MB, 740 + k as u64);
    }
    for i in [2, 1, 0] {
        wait_idle(&c);
        c.kill(i);
        if i > 0 {
            c.wait_members(i);
        }
    }
    for i in 0..3 {
        c.restart(i);
        c.wait_members(i + 1);
        wait_running(&c);
        wait_idle(&c);
    }
    assert_back(&c, 1, &vdis.iter().collect::<Vec<_>>(), None);
}

/// Waits (bounded) until no running node says it is recovering (`dog node recovery` on
/// node 0, as the original's `_wait_for_sheep_recovery`).
fn wait_idle(c: &Cluster) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let i = running(c)[0];
    loop {
        let o = c.dog(i, &["node", "recovery"]);
        if o.status.success() && String::from_utf8_lossy(&o.stdout).lines().count() == 2 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still recovering: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `recover force` starts the cluster with an old node; then a node with newer copies comes
/// back: its bytes win, and so do writes made after the force.
#[test]
fn after_recover_force_a_returning_node_with_newer_copies_wins() {
    let mut c = Cluster::start(3);
    c.dog_ok(0, &["cluster", "format", "--copies=3"]);
    let mut a = Vdi::create(&c, 0, "Alice", 12 * MB);
    a.write(&c, 0, 0, 12 * MB, 81);
    kill(&mut c, 0);
    a.write(&c, 1, 0, 8 * MB, 82);
    kill(&mut c, 1);
    a.write(&c, 2, 4 * MB, 2 * MB, 83);
    kill(&mut c, 2);
    // Node 0 (epoch 1) alone, told to go on.
    c.restart(0);
    assert_waiting(&c, 0, 1);
    c.dog_ok(0, &["cluster", "recover", "force", "-f"]);
    wait_running(&c);
    // Node 2 comes back with the newest copies of everything.
    c.restart(2);
    c.wait_members(2);
    assert_back(&c, 2, &[&a], None);
    c.restart(1);
    c.wait_members(3);
    assert_back(&c, 3, &[&a], None);
    // Epoch numbers go on from the newest any node had.
    let e = history(&c, 0);
    assert!(e[0].0 > 3, "{e:?}");
}

#[test]
fn fresh_nodes_that_join_a_restarted_cluster_list_its_whole_history() {
    // The original's functional test 070.
    let mut c = Cluster::start(3);
    c.dog_ok(0, &["cluster", "format"]);
    c.dog_ok(0, &["cluster", "shutdown"]);
    for i in 0..3 {
        c.wait_exit(i);
    }
    for z in 3..6 {
        c.add(z);
    }
    for i in 0..3 {
        c.restart(i);
    }
    c.wait_members(6);
    for i in 0..6 {
        let info = c.dog_ok(i, &["cluster", "info"]);
        let epoch1 = info
            .lines()
            .find(|l| l.contains(" 1 "))
            .unwrap_or_else(|| panic!("node {i}: {info}"));
        for n in 0..3 {
            assert!(
                epoch1.contains(&format!("127.0.0.1:{}:", c.nodes[n].port)),
                "node {i}'s epoch 1 lacks node {n}: {info}"
            );
        }
    }
}

/// 060 as the original runs it: eight nodes with six copies, four VDIs written while the
/// next ones are created, then every node killed one after the other (each death a new epoch
/// on the nodes still up, so they come back with different epochs) and all started again,
/// three times. Every VDI is listed and reads back everywhere.
#[test]
fn staggered_kills_of_every_node_lose_no_vdi() {
    let n = 8;
    // Recovery slowed down (one object every 200 ms): the cluster is stopped again before
    // the copies set aside when the nodes came back are all in place.
    let mut c = Cluster::start_with(n, &["-R", "max=1,interval=200"]);
    c.dog_ok(0, &["cluster", "format", "--copies=6"]);
    let mut vdis = Vec::new();
    let mut writers = Vec::new();
    for k in 0..4 {
        let mut v = Vdi::create(&c, 0, &format!("test{k}"), 100 * MB);
        let bytes = pattern(512, 90 + k as u64);
        let input = c.tmp.path().join(format!("s{k}"));
        std::fs::write(&input, &bytes).unwrap();
        for j in 0..25usize {
            let off = j * 4 * MB;
            v.data[off..off + 512].copy_from_slice(&bytes);
        }
        let port = c.port(k % n).to_string();
        let name = v.name.clone();
        writers.push(std::thread::spawn(move || {
            for j in 0..25usize {
                let o = std::process::Command::new(common::bin("dog"))
                    .args(["vdi", "write", &name, &(j * 4 * MB).to_string(), "512"])
                    .args(["-p", &port])
                    .stdin(std::fs::File::open(&input).unwrap())
                    .output()
                    .unwrap();
                assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            }
        }));
        vdis.push(v);
    }
    for w in writers {
        w.join().unwrap();
    }
    for _ in 0..3 {
        // Each node's death is a new epoch on the others: they come back with different ones.
        for i in 0..n {
            c.kill(i);
            // Long enough for the others to see it go (a new epoch each).
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
        for i in (0..n).rev() {
            c.restart(i);
        }
        // Killed again at once: recovery of the copies set aside has not finished.
        c.wait_members(n);
    }
    wait_running(&c);
    let list = c.dog_ok(0, &["vdi", "list", "-r"]);
    for v in &vdis {
        assert!(
            list.contains(&format!(" {} 0 ", v.name)),
            "{} is gone: {list}",
            v.name
        );
    }
    assert_back(&c, 6, &vdis.iter().collect::<Vec<_>>(), None);
}

/// The state 060 could leave behind, made by hand: the cluster stopped while every copy of
/// Bob's inode was set aside (stale), none current. Started again, the cluster still knows
/// Bob, recovery puts his inode back, and he reads back.
#[test]
fn a_vdi_whose_inode_is_only_set_aside_everywhere_is_not_forgotten() {
    let mut c = Cluster::start(3);
    c.dog_ok(0, &["cluster", "format", "--copies=3"]);
    let mut bob = Vdi::create(&c, 0, "Bob", 8 * MB);
    bob.write(&c, 1, 0, 8 * MB, 77);
    let list = c.dog_ok(0, &["vdi", "list", "-r", "Bob"]);
    let vid = u32::from_str_radix(list.split(' ').nth(7).unwrap(), 16).unwrap();
    kill_all(&mut c);
    let inode = format!("80{vid:06x}00000000");
    for n in &c.nodes {
        let obj = n.dir.join("obj");
        std::fs::create_dir_all(obj.join(".stale")).unwrap();
        std::fs::rename(
            obj.join(&inode),
            obj.join(".stale").join(format!("{inode}.1")),
        )
        .unwrap_or_else(|e| panic!("{inode} in {:?}: {e}", common::store::objects(&n.dir)));
    }
    for i in 0..3 {
        c.restart(i);
    }
    c.wait_members(3);
    let list = c.dog_ok(2, &["vdi", "list", "-r"]);
    assert!(list.contains(" Bob 0 "), "Bob is forgotten: {list}");
    assert_back(&c, 3, &[&bob], None);
}
