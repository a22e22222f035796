//! This node's metrics: one registry of counters, gauges and histograms, the typed calls the
//! listeners make to count requests (by protocol and opcode, with their latency, bytes and
//! errors) and connections, and the Prometheus text exposition `/metrics` serves. The gauges
//! that come from state (epoch, members, store, disk space, recovery) are read at each scrape.
//! Owns: metric names, labels and the exposition. Never: serving HTTP (that is `http`), or
//! changing any state it reads.
//!
//! Instrumenting a place is one line: `let m = metrics::Request::sheepdog(req, len);` when a
//! request starts and `m.finish_sd(result, reply_len)` (or `m.finish(error)`) when it ends; a
//! request dropped unfinished (its connection went away) counts as failed with `ABORTED`.
//! `let _c = metrics::connection(Listener::Nbd);` counts a connection while it is held.

use crate::node::Node;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use proto::SdResult;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Instant;

/// The protocol a request came in on. Peer requests (the copies a gateway sends, recovery's
/// fetches) arrive on the Sheepdog port and are told apart by their opcode.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Protocol {
    Sheepdog,
    Nbd,
    Peer,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Sheepdog => "sheepdog",
            Protocol::Nbd => "nbd",
            Protocol::Peer => "peer",
        }
    }
}

impl EncodeLabelValue for Protocol {
    fn encode(&self, e: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        e.write_str(self.as_str())
    }
}

/// The listener a connection came in on (its TCP port or unix socket alike).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Listener {
    Sheepdog,
    Nbd,
    Http,
}

impl EncodeLabelValue for Listener {
    fn encode(&self, e: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        e.write_str(match self {
            Listener::Sheepdog => "sheepdog",
            Listener::Nbd => "nbd",
            Listener::Http => "http",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    protocol: Protocol,
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    protocol: Protocol,
    op: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtocolLabels {
    protocol: Protocol,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: Listener,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
}

type LatencyFamily = Family<OpLabels, Histogram, fn() -> Histogram>;

/// Latency buckets: 50 us doubling to about 26 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(50e-6, 2.0, 20))
}

/// Values read from the node's state at each scrape.
#[derive(Default)]
struct StateGauges {
    epoch: Gauge,
    members: Gauge,
    cluster_ok: Gauge,
    objects: Gauge,
    stored: Gauge,
    stale: Gauge,
    disk_size: Gauge,
    disk_free: Gauge,
    disks: Gauge,
    recovery_running: Gauge,
    recovery_epoch: Gauge,
    recovery_done: Gauge,
    recovery_planned: Gauge,
}

struct Metrics {
    registry: Registry,
    requests: Family<OpLabels, Counter>,
    latency: LatencyFamily,
    errors: Family<ErrorLabels, Counter>,
    in_flight: Family<ProtocolLabels, Gauge>,
    read: Family<ProtocolLabels, Counter>,
    written: Family<ProtocolLabels, Counter>,
    conns_open: Family<ListenerLabels, Gauge>,
    conns: Family<ListenerLabels, Counter>,
    state: StateGauges,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The series one (protocol, opcode) counts into, looked up once: after that a request costs
/// atomic updates only, no label hashing.
struct OpSeries {
    requests: Counter,
    latency: Histogram,
    in_flight: Gauge,
    read: Counter,
    written: Counter,
    /// Requests of this opcode in flight (`in_flight` counts the whole protocol's).
    active: AtomicU64,
}

impl OpSeries {
    fn new(labels: &OpLabels) -> OpSeries {
        let m = &*METRICS;
        let p = ProtocolLabels {
            protocol: labels.protocol,
        };
        OpSeries {
            requests: m.requests.get_or_create_owned(labels),
            latency: m.latency.get_or_create_owned(labels),
            in_flight: m.in_flight.get_or_create_owned(&p),
            read: m.read.get_or_create_owned(&p),
            written: m.written.get_or_create_owned(&p),
            active: AtomicU64::new(0),
        }
    }
}

/// The series of each Sheepdog opcode (a peer's or a client's: the opcode tells), and of
/// each NBD command (the last slot for unknown ones).
static SHEEPDOG_SERIES: [OnceLock<OpSeries>; 256] = [const { OnceLock::new() }; 256];
static NBD_SERIES: [OnceLock<OpSeries>; 9] = [const { OnceLock::new() }; 9];

impl Metrics {
    fn new() -> Metrics {
        let mut r = Registry::default();
        let m = Metrics {
            registry: Registry::default(),
            requests: Family::default(),
            latency: LatencyFamily::new_with_constructor(latency_histogram),
            errors: Family::default(),
            in_flight: Family::default(),
            read: Family::default(),
            written: Family::default(),
            conns_open: Family::default(),
            conns: Family::default(),
            state: StateGauges::default(),
        };
        let s = &m.state;
        r.register(
            "sheep_build",
            "The sheep's version",
            Info::new(VersionLabels {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        r.register(
            "sheep_requests",
            "Requests answered, by protocol and opcode",
            m.requests.clone(),
        );
        r.register_with_unit(
            "sheep_request_duration",
            "Time from a request's header to its answer, by protocol and opcode",
            Unit::Seconds,
            m.latency.clone(),
        );
        r.register(
            "sheep_request_errors",
            "Requests answered with an error, by protocol, opcode and result code",
            m.errors.clone(),
        );
        r.register(
            "sheep_requests_in_flight",
            "Requests taken and not yet answered, by protocol",
            m.in_flight.clone(),
        );
        r.register_with_unit(
            "sheep_read",
            "Object data read by clients (sheepdog, nbd) and peers, by protocol",
            Unit::Bytes,
            m.read.clone(),
        );
        r.register_with_unit(
            "sheep_written",
            "Object data written by clients (sheepdog, nbd) and peers, by protocol",
            Unit::Bytes,
            m.written.clone(),
        );
        r.register(
            "sheep_connections_open",
            "Connections being served, by listener",
            m.conns_open.clone(),
        );
        r.register(
            "sheep_connections",
            "Connections accepted and served, by listener",
            m.conns.clone(),
        );
        r.register(
            "sheep_epoch",
            "The cluster's epoch as this node sees it",
            s.epoch.clone(),
        );
        r.register(
            "sheep_members",
            "Nodes in the cluster as this node sees it",
            s.members.clone(),
        );
        r.register(
            "sheep_cluster_ok",
            "1 when the cluster serves I/O (formatted, running), else 0",
            s.cluster_ok.clone(),
        );
        r.register(
            "sheep_store_objects",
            "Current object copies in this node's store",
            s.objects.clone(),
        );
        r.register_with_unit(
            "sheep_store",
            "Disk space the current object copies in this node's store take",
            Unit::Bytes,
            s.stored.clone(),
        );
        r.register(
            "sheep_stale_copies",
            "Copies set aside as stale in this node's store, kept until recovery ends",
            s.stale.clone(),
        );
        r.register_with_unit(
            "sheep_disk_size",
            "Size of the file systems of this node's disks, each counted once",
            Unit::Bytes,
            s.disk_size.clone(),
        );
        r.register_with_unit(
            "sheep_disk_free",
            "Free space of the file systems of this node's disks, each counted once",
            Unit::Bytes,
            s.disk_free.clone(),
        );
        r.register(
            "sheep_disks",
            "Disks in use by this node's store (a failed disk is taken out)",
            s.disks.clone(),
        );
        r.register(
            "sheep_recovery_running",
            "1 while this node recovers an epoch, else 0",
            s.recovery_running.clone(),
        );
        r.register(
            "sheep_recovery_epoch",
            "The epoch this node recovers or last recovered",
            s.recovery_epoch.clone(),
        );
        r.register(
            "sheep_recovery_objects_done",
            "Objects of the current recovery done",
            s.recovery_done.clone(),
        );
        r.register(
            "sheep_recovery_objects_planned",
            "Objects the current recovery has to check or fetch",
            s.recovery_planned.clone(),
        );
        Metrics { registry: r, ..m }
    }
}

/// Object data a request moves when it succeeds.
#[derive(Clone, Copy)]
enum Data {
    None,
    /// Its payload, of this many bytes, was written.
    Written(u64),
    /// This many bytes were read.
    Read(u64),
    /// Its answer's payload was read.
    ReadReply,
}

/// One request from its start to its answer; counted when finished or dropped.
#[must_use = "a request is counted when it is finished"]
pub struct Request {
    labels: OpLabels,
    series: &'static OpSeries,
    start: Instant,
    data: Data,
    /// (error result code, bytes of the answer's payload), set by `finish`.
    outcome: Option<(Option<&'static str>, u64)>,
}

impl Request {
    fn start(slot: &'static OnceLock<OpSeries>, labels: OpLabels, data: Data) -> Request {
        let series = slot.get_or_init(|| OpSeries::new(&labels));
        series.in_flight.inc();
        series.active.fetch_add(1, Ordering::Relaxed);
        Request {
            labels,
            series,
            start: Instant::now(),
            data,
            outcome: None,
        }
    }

    /// A request of the Sheepdog protocol (a peer's, by its opcode: `is_peer`, and the
    /// HELLO_PEER that opens a peer's connection) with `payload` bytes.
    pub fn sheepdog(req: &proto::Header, payload: usize) -> Request {
        use proto::opcode;
        let op = req.opcode();
        let protocol = if opcode::is_peer(op) || op == opcode::HELLO_PEER {
            Protocol::Peer
        } else {
            Protocol::Sheepdog
        };
        let data = match op {
            opcode::CREATE_AND_WRITE_OBJ
            | opcode::WRITE_OBJ
            | opcode::CREATE_AND_WRITE_PEER
            | opcode::WRITE_PEER => Data::Written(payload as u64),
            opcode::READ_OBJ | opcode::READ_PEER => Data::ReadReply,
            _ => Data::None,
        };
        let labels = OpLabels {
            protocol,
            op: opcode::name(op),
        };
        Request::start(&SHEEPDOG_SERIES[usize::from(op)], labels, data)
    }

    /// An NBD request (`proto::nbd::cmd`) of `length` bytes.
    pub fn nbd(kind: u16, length: u32) -> Request {
        use proto::nbd::cmd;
        let data = match kind {
            cmd::WRITE => Data::Written(u64::from(length)),
            cmd::READ => Data::Read(u64::from(length)),
            _ => Data::None,
        };
        let labels = OpLabels {
            protocol: Protocol::Nbd,
            op: cmd::name(kind),
        };
        let slot = &NBD_SERIES[usize::from(kind).min(NBD_SERIES.len() - 1)];
        Request::start(slot, labels, data)
    }

    /// Answered: with the error `error` (a result code's name) or successfully, with `reply`
    /// bytes of payload.
    pub fn finish(mut self, error: Option<&'static str>, reply: usize) {
        self.outcome = Some((error, reply as u64));
    }

    /// Answered with the Sheepdog result `r` and `reply` bytes of payload.
    pub fn finish_sd(self, r: SdResult, reply: usize) {
        let error = (!r.is_ok()).then(|| r.name());
        self.finish(error, reply)
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        let s = self.series;
        s.in_flight.dec();
        s.active.fetch_sub(1, Ordering::Relaxed);
        s.requests.inc();
        s.latency.observe(self.start.elapsed().as_secs_f64());
        let (error, reply) = self.outcome.unwrap_or((Some("ABORTED"), 0));
        match (error, self.data) {
            (Some(result), _) => {
                let labels = ErrorLabels {
                    protocol: self.labels.protocol,
                    op: self.labels.op,
                    result,
                };
                METRICS.errors.get_or_create(&labels).inc();
            }
            (None, Data::Written(n)) => {
                s.written.inc_by(n);
            }
            (None, Data::Read(n)) => {
                s.read.inc_by(n);
            }
            (None, Data::ReadReply) => {
                s.read.inc_by(reply);
            }
            (None, Data::None) => {}
        }
    }
}

/// The counters of STAT (`dog node stat`), as the original counts them: "gateway" requests
/// are the object I/O clients send (Sheepdog's object opcodes, every NBD command), "peer"
/// ones the copies and reads other sheep send; a total counts a request from its start.
/// Bytes are those of requests that succeeded (rx written to this node, tx read from it).
pub fn sd_stat() -> proto::admin::Stat {
    use proto::nbd::cmd;
    use proto::opcode as op;
    let series = |slots: &'static [OnceLock<OpSeries>], ops: &[usize]| {
        ops.iter()
            .filter_map(|&o| slots[o].get())
            .fold((0u64, 0u64), |(active, total), s| {
                let a = s.active.load(Ordering::Relaxed);
                (active + a, total + s.requests.get() + a)
            })
    };
    let sd = |ops: &[u8]| {
        let ops: Vec<usize> = ops.iter().map(|&o| usize::from(o)).collect();
        series(&SHEEPDOG_SERIES, &ops)
    };
    let nbd = |ops: &[u16]| {
        let ops: Vec<usize> = ops.iter().map(|&o| usize::from(o)).collect();
        series(&NBD_SERIES, &ops)
    };
    let (g_active, g_total) = {
        let (a, t) = sd(&[
            op::CREATE_AND_WRITE_OBJ,
            op::READ_OBJ,
            op::WRITE_OBJ,
            op::REMOVE_OBJ,
            op::DISCARD_OBJ,
        ]);
        let (na, nt) = nbd(&[
            cmd::READ,
            cmd::WRITE,
            cmd::FLUSH,
            cmd::TRIM,
            cmd::WRITE_ZEROES,
            cmd::CACHE,
            cmd::BLOCK_STATUS,
        ]);
        (a + na, t + nt)
    };
    let (p_active, p_total) = sd(&[
        op::CREATE_AND_WRITE_PEER,
        op::READ_PEER,
        op::WRITE_PEER,
        op::REMOVE_PEER,
    ]);
    let bytes = |p: Protocol, f: &Family<ProtocolLabels, Counter>| {
        f.get_or_create(&ProtocolLabels { protocol: p }).get()
    };
    let m = &*METRICS;
    proto::admin::Stat {
        gway_active_nr: g_active,
        peer_active_nr: p_active,
        gway_total_nr: g_total,
        peer_total_nr: p_total,
        gway_total_rx: bytes(Protocol::Sheepdog, &m.written) + bytes(Protocol::Nbd, &m.written),
        gway_total_tx: bytes(Protocol::Sheepdog, &m.read) + bytes(Protocol::Nbd, &m.read),
        peer_total_rx: bytes(Protocol::Peer, &m.written),
        peer_total_tx: bytes(Protocol::Peer, &m.read),
        gway_total_remove_nr: sd(&[op::REMOVE_OBJ, op::DISCARD_OBJ]).1 + nbd(&[cmd::TRIM]).1,
        gway_total_read_nr: sd(&[op::READ_OBJ]).1 + nbd(&[cmd::READ]).1,
        gway_total_write_nr: sd(&[op::CREATE_AND_WRITE_OBJ, op::WRITE_OBJ]).1
            + nbd(&[cmd::WRITE]).1,
        gway_total_flush_nr: sd(&[op::FLUSH_VDI]).1 + nbd(&[cmd::FLUSH]).1,
        peer_total_remove_nr: sd(&[op::REMOVE_PEER]).1,
        peer_total_read_nr: sd(&[op::READ_PEER]).1,
        peer_total_write_nr: sd(&[op::CREATE_AND_WRITE_PEER, op::WRITE_PEER]).1,
    }
}

/// A connection being served on `listener`, counted open until it is dropped.
#[must_use = "a connection counts as open while this is held"]
pub struct Connection(Listener);

pub fn connection(listener: Listener) -> Connection {
    let labels = ListenerLabels { listener };
    METRICS.conns.get_or_create(&labels).inc();
    METRICS.conns_open.get_or_create(&labels).inc();
    Connection(listener)
}

impl Drop for Connection {
    fn drop(&mut self) {
        let labels = ListenerLabels { listener: self.0 };
        METRICS.conns_open.get_or_create(&labels).dec();
    }
}

/// The content type of `scrape`'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn set(g: &Gauge, v: u64) {
    g.set(i64::try_from(v).unwrap_or(i64::MAX));
}

/// Every metric in the text exposition format, with the state gauges read from `node` now.
/// A part of the state that cannot be read (the store's directory) keeps its last value and
/// is logged.
pub async fn scrape(node: &Arc<Node>) -> String {
    let m = &*METRICS;
    let s = &m.state;
    let view = node.view();
    set(&s.epoch, u64::from(view.state.epoch));
    set(&s.members, view.state.members.len() as u64);
    let ok = view.state.status == crate::cluster::state::Status::Ok;
    s.cluster_ok.set(i64::from(ok));
    let p = node.recovery.progress();
    s.recovery_running.set(i64::from(p.running));
    set(&s.recovery_epoch, u64::from(p.epoch));
    set(&s.recovery_done, p.done);
    set(&s.recovery_planned, p.total);
    let store = node.store.clone();
    let read =
        tokio::task::spawn_blocking(move || (store.usage(), store.space(), store.disk_count()))
            .await;
    match read {
        Ok((usage, space, disks)) => {
            set(&s.disks, disks as u64);
            match usage {
                Ok(u) => {
                    set(&s.objects, u.objects);
                    set(&s.stored, u.bytes);
                    set(&s.stale, u.stale);
                }
                Err(e) => tracing::warn!("metrics: reading the store: {e}"),
            }
            match space {
                Ok((total, free)) => {
                    set(&s.disk_size, total);
                    set(&s.disk_free, free);
                }
                Err(e) => tracing::warn!("metrics: reading the disk space: {e}"),
            }
        }
        Err(e) => tracing::warn!("metrics: reading the store: {e}"),
    }
    let mut out = String::with_capacity(16 << 10);
    // Writing into a String does not fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &m.registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text() -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &METRICS.registry).unwrap();
        out
    }

    fn value(text: &str, prefix: &str) -> f64 {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .map(|v| v.parse().unwrap())
            .unwrap_or(0.0)
    }

    #[test]
    fn requests_bytes_and_errors_are_counted_by_label() {
        let before = text();
        let mut h = proto::Header::request(proto::opcode::WRITE_PEER);
        h.set_data_length(4096);
        Request::sheepdog(&h, 4096).finish_sd(SdResult::SUCCESS, 0);
        Request::nbd(proto::nbd::cmd::READ, 512).finish(None, 0);
        Request::nbd(proto::nbd::cmd::WRITE, 512).finish(Some("EPERM"), 0);
        drop(Request::nbd(proto::nbd::cmd::FLUSH, 0));
        let c = connection(Listener::Http);
        let after = text();
        let grew = |p: &str| value(&after, p) - value(&before, p);
        assert_eq!(
            grew(r#"sheep_requests_total{protocol="peer",op="WRITE_PEER"}"#),
            1.0
        );
        assert_eq!(
            grew(r#"sheep_written_bytes_total{protocol="peer"}"#),
            4096.0
        );
        assert_eq!(grew(r#"sheep_read_bytes_total{protocol="nbd"}"#), 512.0);
        assert_eq!(grew(r#"sheep_written_bytes_total{protocol="nbd"}"#), 0.0);
        assert_eq!(
            grew(r#"sheep_request_errors_total{protocol="nbd",op="WRITE",result="EPERM"}"#),
            1.0
        );
        assert_eq!(
            grew(r#"sheep_request_errors_total{protocol="nbd",op="FLUSH",result="ABORTED"}"#),
            1.0
        );
        assert_eq!(
            grew(r#"sheep_request_duration_seconds_count{protocol="nbd",op="READ"}"#),
            1.0
        );
        assert_eq!(grew(r#"sheep_connections_total{listener="http"}"#), 1.0);
        drop(c);
        assert_eq!(
            value(&text(), r#"sheep_connections_open{listener="http"}"#),
            value(&before, r#"sheep_connections_open{listener="http"}"#)
        );
    }
}
