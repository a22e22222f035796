//! The HTTP volume API (`/v1`, described by `docs/openapi.json`): volumes (VDIs) listed,
//! created, resized, snapshotted, cloned and deleted; the cluster and its nodes. The API is a
//! client of its own node: every change is the request sequence of `client::volumes` sent to
//! this sheep's Sheepdog port, the very one `dog` sends, so a VDI made either way is made by
//! the same cluster operation. Listings read the cluster state this node holds.
//! Owns: the JSON shapes, the mapping of result codes to HTTP answers. Never: VDI or cluster
//! logic of its own, the access rule (`http`), disk I/O.

use crate::node::Node;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use client::volumes::{self, VolumeError};
use client::Connection;
use futures::stream::{self, StreamExt};
use proto::inode::InodeHeader;
use proto::SdResult;
use serde::Deserialize;
use serde_json::{json, Value};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// The OpenAPI description served at `/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("../../../docs/openapi.json");

/// Inodes read at once while listing.
const IN_FLIGHT: usize = 8;
/// Time a node has to answer a question of `GET /v1/nodes`.
const NODE_LIMIT: Duration = Duration::from_secs(3);

/// What the API needs to know of its node.
pub struct Api {
    pub node: Arc<Node>,
    /// This node's Sheepdog port, as a client reaches it.
    sheep_at: SocketAddr,
    conn: tokio::sync::Mutex<Option<Arc<Connection>>>,
}

impl Api {
    /// `listen`: where the Sheepdog port listens (an unspecified address is reached through
    /// loopback).
    pub fn new(node: Arc<Node>, listen: SocketAddr) -> Arc<Api> {
        let ip = match listen.ip() {
            IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        Arc::new(Api {
            node,
            sheep_at: SocketAddr::new(ip, listen.port()),
            conn: tokio::sync::Mutex::new(None),
        })
    }

    /// The connection to this node's Sheepdog port (made again when it broke).
    async fn conn(&self) -> Result<Arc<Connection>, ApiError> {
        let mut c = self.conn.lock().await;
        if let Some(existing) = c.as_ref().filter(|c| !c.is_broken()) {
            return Ok(existing.clone());
        }
        let new = Arc::new(
            Connection::connect(self.sheep_at)
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?,
        );
        *c = Some(new.clone());
        Ok(new)
    }

    /// The NBD URIs of `export` on every member that serves NBD over TCP (each member's
    /// port is the one it announced when it joined).
    fn attach(&self, export: &str) -> Vec<String> {
        let view = self.node.view();
        let mut out = Vec::new();
        for m in &view.state.members {
            let port = view
                .state
                .services
                .get(&m.nid.to_string())
                .and_then(|s| s.nbd_port);
            if let Some(p) = port {
                let host = match m.nid.ip() {
                    IpAddr::V4(a) => a.to_string(),
                    IpAddr::V6(a) => format!("[{a}]"),
                };
                out.push(format!("nbd://{host}:{p}/{}", escape(export)));
            }
        }
        out
    }
}

/// Percent-encodes what is not an unreserved URI character.
fn escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An error answer: HTTP status, a stable code, and the text.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "INVALID_REQUEST", message)
    }

    fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", message)
    }

    /// The answer for the sheep's result code `r`, with what was being done.
    fn of_result(r: SdResult, what: &str) -> ApiError {
        let (status, code) = match r {
            SdResult::NO_VDI | SdResult::NO_TAG | SdResult::NO_BASE_VDI => {
                (StatusCode::NOT_FOUND, "NO_SUCH_VOLUME")
            }
            SdResult::VDI_EXIST => (StatusCode::CONFLICT, "ALREADY_EXISTS"),
            SdResult::VDI_LOCKED => (StatusCode::CONFLICT, "LOCKED"),
            SdResult::NO_SPACE => (StatusCode::INSUFFICIENT_STORAGE, "NO_SPACE"),
            SdResult::FULL_VDI => (StatusCode::INSUFFICIENT_STORAGE, "TOO_MANY_VOLUMES"),
            SdResult::HALT
            | SdResult::WAIT_FOR_FORMAT
            | SdResult::WAIT_FOR_JOIN
            | SdResult::SHUTDOWN
            | SdResult::STARTUP
            | SdResult::KILLED
            | SdResult::NOT_FORMATTED => (StatusCode::SERVICE_UNAVAILABLE, "CLUSTER_HALTED"),
            SdResult::INVALID_PARMS => (StatusCode::BAD_REQUEST, "INVALID_REQUEST"),
            SdResult::NO_SUPPORT => (StatusCode::NOT_IMPLEMENTED, "NOT_SUPPORTED"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL"),
        };
        ApiError::new(status, code, format!("{what}: {}", r.text()))
    }

    fn of_volume(e: VolumeError, what: &str) -> ApiError {
        match e {
            VolumeError::Refused { result, .. } => ApiError::of_result(result, what),
            e @ VolumeError::TooLong { .. } => ApiError::bad(e.to_string()),
            e => ApiError::internal(format!("{what}: {e}")),
        }
    }
}

/// `v` as a JSON answer with `status`.
pub(crate) fn json_answer(status: StatusCode, v: &Value) -> Response {
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.code, "message": self.message });
        json_answer(self.status, &body)
    }
}

type Answer = Result<Response, ApiError>;

fn ok(status: StatusCode, v: Value) -> Answer {
    Ok(json_answer(status, &v))
}

fn vid_hex(vid: u32) -> String {
    format!("{vid:x}")
}

/// Seconds since the epoch of an inode time (seconds in the high 32 bits).
fn secs(t: u64) -> u64 {
    t >> 32
}

/// The object size shift of `h`, one outside the protocol's range (a corrupt inode) taken
/// as the nearest valid one.
fn shift(h: &InodeHeader) -> u8 {
    h.block_size_shift.clamp(
        proto::SD_MIN_BLOCK_SIZE_SHIFT,
        proto::SD_MAX_BLOCK_SIZE_SHIFT,
    )
}

fn snapshot_json(h: &InodeHeader) -> Value {
    json!({
        "id": h.snap_id,
        "tag": String::from_utf8_lossy(&h.tag),
        "vdi_id": vid_hex(h.vdi_id),
        "size": h.vdi_size,
        "created": secs(h.snap_ctime),
    })
}

/// Every live VDI's inode header, read through `c`.
async fn headers(api: &Api, c: &Connection) -> Result<Vec<InodeHeader>, ApiError> {
    let view = api.node.view();
    let vids: Vec<u32> = view
        .state
        .vdis
        .iter()
        .filter(|(_, i)| !i.deleted)
        .map(|(&v, _)| v)
        .collect();
    let read: Vec<Result<InodeHeader, VolumeError>> = stream::iter(vids)
        .map(|v| volumes::read_header(c, v))
        .buffered(IN_FLIGHT)
        .collect()
        .await;
    let mut out = Vec::new();
    for h in read {
        match h {
            Ok(h) if !h.name.is_empty() => out.push(h),
            Ok(_) => {}
            Err(e) => return Err(ApiError::of_volume(e, "reading the VDIs")),
        }
    }
    Ok(out)
}

/// One volume: the working VDI `h` with its snapshots among `all`.
async fn volume_json(
    api: &Api,
    c: &Connection,
    h: &InodeHeader,
    all: &[InodeHeader],
) -> Result<Value, ApiError> {
    let obj = 1u64 << shift(h);
    let table = volumes::read_table(c, h.vdi_id, h.vdi_size.div_ceil(obj))
        .await
        .map_err(|e| ApiError::of_volume(e, "reading the inode"))?;
    let own = table.iter().filter(|&&v| v == h.vdi_id).count() as u64;
    let shared = table.iter().filter(|&&v| v != 0 && v != h.vdi_id).count() as u64;
    let mut snaps: Vec<&InodeHeader> = all
        .iter()
        .filter(|s| s.is_snapshot() && s.name == h.name)
        .collect();
    snaps.sort_by_key(|s| s.snap_id);
    let view = api.node.view();
    let open_by: Vec<Value> = view
        .state
        .locks
        .get(&h.vdi_id)
        .map(|l| {
            l.holders
                .iter()
                .map(|x| json!({ "node": x.node, "client": x.client }))
                .collect()
        })
        .unwrap_or_default();
    let name = String::from_utf8_lossy(&h.name).into_owned();
    let parent = (h.parent_vdi_id != 0).then(|| vid_hex(h.parent_vdi_id));
    Ok(json!({
        "name": name,
        "vdi_id": vid_hex(h.vdi_id),
        "size": h.vdi_size,
        "used": own * obj,
        "shared": shared * obj,
        "copies": h.nr_copies,
        "copy_policy": h.copy_policy,
        "block_size_shift": h.block_size_shift,
        "created": secs(h.create_time),
        "parent": parent,
        "snapshots": snaps.iter().map(|s| snapshot_json(s)).collect::<Vec<_>>(),
        "open_by": open_by,
        "attach": { "nbd": api.attach(&name) },
    }))
}

/// The working VDI `name` and every live header, or 404.
async fn working(
    api: &Api,
    c: &Connection,
    name: &str,
) -> Result<(InodeHeader, Vec<InodeHeader>), ApiError> {
    volumes::name_payload(name).map_err(|e| ApiError::bad(e.to_string()))?;
    let all = headers(api, c).await?;
    let h = all
        .iter()
        .find(|h| !h.is_snapshot() && h.name == name.as_bytes())
        .cloned()
        .ok_or_else(|| ApiError::of_result(SdResult::NO_VDI, &format!("volume {name}")))?;
    Ok((h, all))
}

/// The volume `name` as it is now, answered with `status`.
async fn volume_answer(api: &Api, c: &Connection, name: &str, status: StatusCode) -> Answer {
    let (h, all) = working(api, c, name).await?;
    ok(status, volume_json(api, c, &h, &all).await?)
}

async fn list_volumes(State(api): State<Arc<Api>>) -> Answer {
    let c = api.conn().await?;
    let all = headers(&api, &c).await?;
    let mut out = Vec::new();
    for h in all.iter().filter(|h| !h.is_snapshot()) {
        out.push(volume_json(&api, &c, h, &all).await?);
    }
    out.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    ok(StatusCode::OK, Value::Array(out))
}

async fn get_volume(State(api): State<Arc<Api>>, Path(name): Path<String>) -> Answer {
    let c = api.conn().await?;
    volume_answer(&api, &c, &name, StatusCode::OK).await
}

/// The body of `POST /v1/volumes`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: String,
    size: u64,
    /// Copies (0 or absent: the cluster's).
    #[serde(default)]
    copies: u8,
    /// Object size shift (0 or absent: the cluster's).
    #[serde(default)]
    block_size_shift: u8,
}

/// A JSON body, or 400 with the reason.
fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad(format!("bad JSON body: {e}")))
}

async fn create_volume(State(api): State<Arc<Api>>, bytes: axum::body::Bytes) -> Answer {
    let b: CreateBody = body(&bytes)?;
    if b.name.is_empty() {
        return Err(ApiError::bad("a volume needs a name"));
    }
    if b.size == 0 {
        // Larger than the object size allows is the sheep's INVALID_PARMS (400).
        return Err(ApiError::bad("size must be at least 1 byte"));
    }
    let c = api.conn().await?;
    let v = volumes::NewVdi {
        name: b.name.clone(),
        size: b.size,
        copies: b.copies,
        block_size_shift: b.block_size_shift,
        ..Default::default()
    };
    volumes::new_vdi(&c, &v)
        .await
        .map_err(|e| ApiError::of_volume(e, &format!("creating volume {}", b.name)))?;
    volume_answer(&api, &c, &b.name, StatusCode::CREATED).await
}

async fn delete_volume(State(api): State<Arc<Api>>, Path(name): Path<String>) -> Answer {
    let c = api.conn().await?;
    volumes::delete(&c, &name, 0, "")
        .await
        .map_err(|e| ApiError::of_volume(e, &format!("deleting volume {name}")))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SnapshotBody {
    #[serde(default)]
    tag: String,
}

async fn create_snapshot(
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
    bytes: axum::body::Bytes,
) -> Answer {
    let b: SnapshotBody = if bytes.is_empty() {
        SnapshotBody::default()
    } else {
        body(&bytes)?
    };
    let c = api.conn().await?;
    let (h, _) = working(&api, &c, &name).await?;
    if !b.tag.is_empty() && b.tag.bytes().all(|c| c.is_ascii_digit()) {
        return Err(ApiError::bad(
            "a snapshot tag must not be a number (numbers are snapshot ids)",
        ));
    }
    volumes::snapshot(&c, &h, &b.tag)
        .await
        .map_err(|e| ApiError::of_volume(e, &format!("snapshotting volume {name}")))?;
    let snap = volumes::read_header(&c, h.vdi_id)
        .await
        .map_err(|e| ApiError::of_volume(e, "reading the snapshot"))?;
    ok(StatusCode::CREATED, snapshot_json(&snap))
}

async fn list_snapshots(State(api): State<Arc<Api>>, Path(name): Path<String>) -> Answer {
    let c = api.conn().await?;
    let (h, all) = working(&api, &c, &name).await?;
    let v = volume_json(&api, &c, &h, &all).await?;
    ok(StatusCode::OK, v["snapshots"].clone())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CloneBody {
    /// The new volume's name.
    name: String,
    /// The snapshot to clone: its id (a number) or its tag (a string).
    snapshot: Value,
}

async fn clone_volume(
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
    bytes: axum::body::Bytes,
) -> Answer {
    let b: CloneBody = body(&bytes)?;
    let (snapid, tag) = match &b.snapshot {
        Value::Number(n) => (
            n.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|&n| n > 0)
                .ok_or_else(|| ApiError::bad("snapshot id must be a positive number"))?,
            String::new(),
        ),
        Value::String(s) if !s.is_empty() => (0, s.clone()),
        _ => return Err(ApiError::bad("snapshot: an id (number) or a tag (string)")),
    };
    let c = api.conn().await?;
    let what = format!("snapshot {} of volume {name}", b.snapshot);
    let vid = volumes::find(&c, &name, snapid, &tag)
        .await
        .map_err(|e| ApiError::of_volume(e, &what))?;
    let snap = volumes::read_header(&c, vid)
        .await
        .map_err(|e| ApiError::of_volume(e, &what))?;
    if !snap.is_snapshot() {
        return Err(ApiError::bad("only snapshots can be cloned"));
    }
    volumes::new_from(&c, &b.name, &snap, false, None)
        .await
        .map_err(|e| ApiError::of_volume(e, &format!("creating volume {}", b.name)))?;
    volume_answer(&api, &c, &b.name, StatusCode::CREATED).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResizeBody {
    size: u64,
}

async fn resize_volume(
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
    bytes: axum::body::Bytes,
) -> Answer {
    let b: ResizeBody = body(&bytes)?;
    let c = api.conn().await?;
    let (mut h, _) = working(&api, &c, &name).await?;
    let max = (1u64 << shift(&h)) * proto::SD_INODE_DATA_INDEX;
    if b.size > max {
        return Err(ApiError::bad(format!(
            "size {} is larger than this volume's largest, {max} bytes",
            b.size
        )));
    }
    if b.size < h.vdi_size {
        return Err(ApiError::bad("volumes cannot shrink"));
    }
    h.vdi_size = b.size;
    volumes::write_header(&c, &h)
        .await
        .map_err(|e| ApiError::of_volume(e, &format!("resizing volume {name}")))?;
    volume_answer(&api, &c, &name, StatusCode::OK).await
}

fn status_text(s: crate::cluster::state::Status) -> &'static str {
    use crate::cluster::state::Status;
    match s {
        Status::WaitForFormat => "waiting for format",
        Status::WaitForJoin => "waiting for nodes to join",
        Status::Ok => "running",
        Status::Shutdown => "shut down",
    }
}

/// Space and recovery of every member, asked of each (as `dog node info` and `dog node
/// recovery` ask).
async fn nodes_json(api: &Api) -> Vec<Value> {
    let view = api.node.view();
    let members = view.state.members.clone();
    let view = &view;
    stream::iter(members)
        .map(|m| async move {
            let asked = tokio::time::timeout(NODE_LIMIT, async {
                let c = Connection::connect(m.nid.socket_addr())
                    .await
                    .map_err(|e| e.to_string())?;
                let space = client::admin::stat_sheep(&c)
                    .await
                    .map_err(|e| e.to_string())?;
                let rec = client::admin::stat_recovery(&c)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>((space, rec))
            })
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {NODE_LIMIT:?}")));
            let services = view.state.services.get(&m.nid.to_string()).copied();
            let mut v = json!({
                "id": m.nid.to_string(),
                "zone": m.zone,
                "vnodes": m.nr_vnodes,
                "this_node": m.nid == api.node.me.nid,
                "nbd_port": services.and_then(|s| s.nbd_port),
                "http_port": services.and_then(|s| s.http_port),
            });
            match asked {
                Ok((space, rec)) => {
                    v["space"] = json!({
                        "size": space.size,
                        "free": space.free,
                        "used": space.size.saturating_sub(space.free),
                    });
                    v["recovery"] = json!({
                        "running": rec.running,
                        "done": rec.done,
                        "total": rec.total,
                        "problem": rec.problem,
                    });
                }
                Err(e) => v["error"] = json!(e),
            }
            v
        })
        .buffered(IN_FLIGHT)
        .collect()
        .await
}

async fn get_nodes(State(api): State<Arc<Api>>) -> Answer {
    ok(StatusCode::OK, Value::Array(nodes_json(&api).await))
}

async fn get_cluster(State(api): State<Arc<Api>>) -> Answer {
    let view = api.node.view();
    let s = &view.state;
    let nodes = nodes_json(&api).await;
    let (size, free) = nodes.iter().fold((0u64, 0u64), |(a, b), n| {
        (
            a + n["space"]["size"].as_u64().unwrap_or(0),
            b + n["space"]["free"].as_u64().unwrap_or(0),
        )
    });
    let volumes = s
        .vdis
        .values()
        .filter(|i| !i.deleted && !i.snapshot)
        .count();
    ok(
        StatusCode::OK,
        json!({
            "status": status_text(s.status),
            "epoch": s.epoch,
            "copies": s.format.copies,
            "copy_policy": s.format.copy_policy,
            "created": s.format.ctime >> 32,
            "store": s.format.store,
            "recovery_disabled": s.recovery_disabled,
            "members": s.members.iter().map(|m| m.nid.to_string()).collect::<Vec<_>>(),
            "epoch_members": s.epoch_nodes.iter().map(|m| m.nid.to_string()).collect::<Vec<_>>(),
            "space": { "size": size, "free": free, "used": size.saturating_sub(free) },
            "volumes": volumes,
            "nodes": nodes,
        }),
    )
}

async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
        .into_response()
}

/// The `/v1` routes.
pub fn routes(api: Arc<Api>) -> Router {
    Router::new()
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/volumes", get(list_volumes).post(create_volume))
        .route("/v1/volumes/{name}", get(get_volume).delete(delete_volume))
        .route(
            "/v1/volumes/{name}/snapshots",
            get(list_snapshots).post(create_snapshot),
        )
        .route("/v1/volumes/{name}/clone", post(clone_volume))
        .route("/v1/volumes/{name}/resize", post(resize_volume))
        .route("/v1/cluster", get(get_cluster))
        .route("/v1/nodes", get(get_nodes))
        .with_state(api)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_codes_become_http_answers() {
        let e = ApiError::of_result(SdResult::NO_VDI, "volume a");
        assert_eq!(
            (e.status, e.code),
            (StatusCode::NOT_FOUND, "NO_SUCH_VOLUME")
        );
        assert_eq!(e.message, "volume a: No VDI found");
        let e = ApiError::of_result(SdResult::VDI_EXIST, "x");
        assert_eq!((e.status, e.code), (StatusCode::CONFLICT, "ALREADY_EXISTS"));
        let e = ApiError::of_result(SdResult::VDI_LOCKED, "x");
        assert_eq!((e.status, e.code), (StatusCode::CONFLICT, "LOCKED"));
        let e = ApiError::of_result(SdResult::NO_SPACE, "x");
        assert_eq!(e.status, StatusCode::INSUFFICIENT_STORAGE);
        let e = ApiError::of_result(SdResult::HALT, "x");
        assert_eq!(
            (e.status, e.code),
            (StatusCode::SERVICE_UNAVAILABLE, "CLUSTER_HALTED")
        );
    }

    #[test]
    fn export_names_are_escaped_in_uris() {
        assert_eq!(escape("Alice"), "Alice");
        assert_eq!(escape("a b/c@d"), "a%20b%2Fc%40d");
    }

    #[test]
    fn the_openapi_file_is_json_and_names_every_route() {
        let v: Value = serde_json::from_str(OPENAPI).unwrap();
        let paths = v["paths"].as_object().unwrap();
        for p in [
            "/v1/openapi.json",
            "/v1/volumes",
            "/v1/volumes/{name}",
            "/v1/volumes/{name}/snapshots",
            "/v1/volumes/{name}/clone",
            "/v1/volumes/{name}/resize",
            "/v1/cluster",
            "/v1/nodes",
        ] {
            assert!(paths.contains_key(p), "{p} missing from docs/openapi.json");
        }
    }
}
