//! Per-VDI redundancy, as the original's functional test 096 walks it: `dog cluster
//! alter-copy` changes the copies of VDIs created later, `dog vdi alter-copy` the copies of
//! one standalone VDI, whose objects then move (every object ends with exactly that many
//! copies, on the nodes the ring gives them, and reads back), up and down; erasure coded
//! VDIs, bad numbers and VDIs that share objects are refused with the original's texts.

mod common;

use common::store::objects;
use common::{pattern, Cluster};
use std::time::{Duration, Instant};

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Copies in every store's `obj/` of the objects of the VDI whose id is `vid`.
fn copies(c: &Cluster, vid: &str) -> usize {
    c.nodes
        .iter()
        .map(|n| objects(&n.dir).iter().filter(|o| o[2..8] == *vid).count())
        .sum()
}

/// Waits until the 4 objects of `vid` (inode and 3 data objects) have `n` copies each.
fn wait_copies(c: &Cluster, vid: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while copies(c, vid) != 4 * n {
        assert!(
            Instant::now() < deadline,
            "{} copies of {vid}'s objects, want {}",
            copies(c, vid),
            4 * n
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn copies_of_the_cluster_and_of_one_vdi_change_and_objects_follow() {
    let c = Cluster::start(6);
    let yes = c.tmp.path().join("yes");
    std::fs::write(&yes, "yes\n").unwrap();

    // Erasure coding is not changed.
    c.dog_ok(0, &["cluster", "format", "-c", "4:2"]);
    let o = c.dog(0, &["cluster", "alter-copy", "-c", "3"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "The cluster's copy policy is erasure code, changing it is not supported yet.\n"
    );
    c.dog_ok(0, &["vdi", "create", "ec", "4M"]);
    let o = c.dog(0, &["vdi", "alter-copy", "ec", "-c", "3"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "ec's copy policy is erasure code, changing it is not supported yet.\n"
    );

    c.dog_ok(0, &["cluster", "format", "-f", "-c", "3"]);
    for bad in ["something", "0"] {
        let o = c.dog(0, &["cluster", "alter-copy", "-c", bad]);
        assert!(!o.status.success());
        assert!(
            stderr(&o).starts_with(&format!("Invalid parameter {bad}\n")),
            "{o:?}"
        );
    }
    let o = c.dog(0, &["cluster", "alter-copy", "-c", "3"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "The cluster's redundancy level is already set to 3, nothing changed.\n"
    );
    let o = c.dog(0, &["cluster", "alter-copy", "-c", "4:2"]);
    assert_eq!(o.status.code(), Some(64));
    assert!(stderr(&o)
        .starts_with("Changing redundancy level of erasure coded vdi is not supported yet.\n"));
    assert!(
        stdout(&o).starts_with("Usage: dog cluster alter-copy"),
        "{o:?}"
    );

    // The cluster's copies: for VDIs created later.
    let o = c.dog_stdin(0, &["cluster", "alter-copy", "-c", "2"], Some(&yes));
    assert!(o.status.success(), "{o:?}");
    assert_eq!(
        stderr(&o),
        "The cluster's redundancy level is set to 2, the old one was 3.\n"
    );
    assert!(stdout(&o).contains("Changing cluster's redundancy level will affect"));
    let info = c.dog_ok(3, &["cluster", "info", "-v"]);
    assert!(info.contains("plain with 2 redundancy policy"), "{info}");
    c.dog_ok(1, &["vdi", "create", "-P", "test", "12M"]);
    let list = c.dog_ok(0, &["vdi", "list", "-r", "test"]);
    let vid = list.split(' ').nth(7).unwrap().to_string();
    assert!(list.contains(" 2 "), "{list}");
    wait_copies(&c, &vid, 2);
    let data = pattern(12 << 20, 9);
    let input = c.tmp.path().join("data");
    std::fs::write(&input, &data).unwrap();
    let w = c.dog_stdin(0, &["vdi", "write", "test", "0", "12M"], Some(&input));
    assert!(w.status.success(), "{}", stderr(&w));

    let o = c.dog(0, &["vdi", "alter-copy", "test", "-c", "2"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "test's redundancy level is already set to 2, nothing changed.\n"
    );
    let o = c.dog(0, &["vdi", "alter-copy", "test", "-c", "4:2"]);
    assert_eq!(o.status.code(), Some(64));

    // Up to six copies and down to one: the objects follow, and read back every time.
    for n in (3..=6).chain((1..=5).rev()) {
        let o = c.dog_stdin(
            2,
            &["vdi", "alter-copy", "test", "-c", &n.to_string()],
            Some(&yes),
        );
        assert!(o.status.success(), "{o:?}");
        assert!(stderr(&o).starts_with(&format!("test's redundancy level is set to {n}, ")));
        assert!(stdout(&o).contains("the VDI itself only and trigger recovery."));
        wait_copies(&c, &vid, n);
        let list = c.dog_ok(0, &["vdi", "list", "-r", "test"]);
        assert_eq!(
            list.split(' ').nth(8),
            Some(n.to_string().as_str()),
            "{list}"
        );
        let back = c.dog(n % 6, &["vdi", "read", "test", "0", "12M"]);
        assert!(
            back.status.success() && back.stdout == data,
            "test at {n} copies"
        );
    }

    // A VDI that shares objects with another is refused.
    c.dog_ok(0, &["vdi", "snapshot", "-s", "s1", "test"]);
    c.dog_ok(0, &["vdi", "clone", "-s", "s1", "test", "clone1"]);
    for name in ["test", "clone1"] {
        let o = c.dog(0, &["vdi", "alter-copy", name, "-c", "2"]);
        assert_eq!(o.status.code(), Some(1));
        assert_eq!(
            stderr(&o),
            format!(
                "Only standalone vdi supports changing redundancy level.\n\
                 Please clone {name} with -n (--no-share) option first.\n"
            )
        );
    }
    // A clone that shares nothing (-n) is standalone: its copies can change, and it holds
    // the snapshot's data in objects of its own.
    c.dog_ok(0, &["vdi", "clone", "-n", "-s", "s1", "test", "clone2"]);
    let list = c.dog_ok(0, &["vdi", "list", "-r", "clone2"]);
    assert!(
        list.starts_with("= clone2 0 12582912 12582912 0 "),
        "{list}"
    );
    let vid2 = list.split(' ').nth(7).unwrap().to_string();
    let o = c.dog_stdin(0, &["vdi", "alter-copy", "clone2", "-c", "2"], Some(&yes));
    assert!(o.status.success(), "{o:?}");
    wait_copies(&c, &vid2, 2);
    let back = c.dog(4, &["vdi", "read", "clone2", "0", "12M"]);
    assert!(
        back.status.success() && back.stdout == data,
        "clone2 reads the snapshot's data"
    );

    // More copies than nodes asks first; "no" changes nothing.
    let no = c.tmp.path().join("no");
    std::fs::write(&no, "no\n").unwrap();
    c.dog_ok(0, &["vdi", "create", "solo", "4M"]);
    let o = c.dog_stdin(0, &["vdi", "alter-copy", "solo", "-c", "7"], Some(&no));
    assert!(stdout(&o).starts_with("Number of copies (7) is larger than number of nodes (6)."));
    let list = c.dog_ok(0, &["vdi", "list", "-r", "solo"]);
    assert_eq!(list.split(' ').nth(8), Some("2"), "{list}");
}
