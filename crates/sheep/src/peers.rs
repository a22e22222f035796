//! Persistent connections to the other sheep, one pipelined connection per peer, reopened when
//! it breaks. Owns: the pool. Never: deciding where requests go.

use bytes::Bytes;
use client::{Connection, Response};
use proto::node::NodeId;
use proto::{Header, SdResult};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Default)]
pub struct Peers {
    conns: Mutex<HashMap<NodeId, Arc<Connection>>>,
}

impl Peers {
    pub fn new() -> Peers {
        Peers::default()
    }

    async fn get(&self, nid: NodeId) -> Result<Arc<Connection>, SdResult> {
        if let Some(c) = self
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&nid)
        {
            if !c.is_broken() {
                return Ok(c.clone());
            }
        }
        let addr = nid.socket_addr();
        let conn = match tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(addr)).await {
            Ok(Ok(c)) => Arc::new(c),
            Ok(Err(e)) => {
                tracing::debug!("peer {nid}: {e}");
                return Err(SdResult::NETWORK_ERROR);
            }
            Err(_) => return Err(SdResult::NETWORK_ERROR),
        };
        self.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(nid, conn.clone());
        Ok(conn)
    }

    /// Sends one request to `nid`; a broken connection is reopened once.
    pub async fn request(
        &self,
        nid: NodeId,
        hdr: Header,
        payload: Bytes,
    ) -> Result<Response, SdResult> {
        for attempt in 0..2 {
            let conn = self.get(nid).await?;
            match conn.request(hdr, payload.clone()).await {
                Ok(r) => return Ok(r),
                Err(e) => {
                    tracing::debug!("peer {nid} (attempt {attempt}): {e}");
                    self.conns
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&nid);
                }
            }
        }
        Err(SdResult::NETWORK_ERROR)
    }
}
