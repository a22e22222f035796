//! The one connection `dog` talks over, and turning results into the original's messages and
//! exit codes. Owns: connecting and request helpers. Never: formatting output.

use bytes::Bytes;
use client::{Connection, Response};
use proto::{Header, SdResult};

pub const EXIT_FAILURE: i32 = 1;
pub const EXIT_SYSFAIL: i32 = 2;
pub const EXIT_EXISTS: i32 = 3;
pub const EXIT_MISSING: i32 = 5;
pub const EXIT_USAGE: i32 = 64;

/// A failure to report: message and exit code.
#[derive(Debug)]
pub struct Fail(pub String, pub i32);

pub type Res<T> = Result<T, Fail>;

pub fn exit_code(r: SdResult) -> i32 {
    match r {
        SdResult::VDI_EXIST => EXIT_EXISTS,
        SdResult::NO_VDI | SdResult::NO_TAG | SdResult::NO_OBJ => EXIT_MISSING,
        SdResult::FULL_VDI | SdResult::NO_SPACE => 4,
        SdResult::SYSTEM_ERROR
        | SdResult::EIO
        | SdResult::WAIT_FOR_FORMAT
        | SdResult::WAIT_FOR_JOIN
        | SdResult::SHUTDOWN
        | SdResult::HALT => EXIT_SYSFAIL,
        _ => EXIT_FAILURE,
    }
}

/// "<what>: <result text>" with the exit code the result calls for.
pub fn fail(what: &str, r: SdResult) -> Fail {
    Fail(format!("{what}: {}", r.text()), exit_code(r))
}

pub struct Dog {
    pub conn: Connection,
    pub addr: String,
    pub port: u16,
}

impl Dog {
    pub async fn connect(addr: &str, port: u16) -> Res<Dog> {
        let host = if addr == "localhost" {
            "127.0.0.1"
        } else {
            addr
        };
        match Connection::connect(format!("{host}:{port}")).await {
            Ok(conn) => Ok(Dog {
                conn,
                addr: host.to_string(),
                port,
            }),
            Err(client::ClientError::Connect { source, .. }) => Err(Fail(
                format!("failed to connect to {host}:{port}: {source}"),
                EXIT_SYSFAIL,
            )),
            Err(e) => Err(Fail(
                format!("failed to connect to {host}:{port}: {e}"),
                EXIT_SYSFAIL,
            )),
        }
    }

    pub async fn send(&self, h: Header, payload: Vec<u8>, read_len: u32) -> Res<Response> {
        let r = if payload.is_empty() {
            self.conn.read(h, read_len).await
        } else {
            self.conn.write(h, Bytes::from(payload)).await
        };
        r.map_err(|e| {
            Fail(
                format!(
                    "failed to communicate with {}:{}: {e}",
                    self.addr, self.port
                ),
                EXIT_SYSFAIL,
            )
        })
    }

    /// Sends and requires SUCCESS; `what` names the action for the error message.
    pub async fn ok(
        &self,
        what: &str,
        h: Header,
        payload: Vec<u8>,
        read_len: u32,
    ) -> Res<Response> {
        let r = self.send(h, payload, read_len).await?;
        match r.result() {
            SdResult::SUCCESS => Ok(r),
            e => Err(fail(what, e)),
        }
    }
}
