//! The requests that ask a node about itself, as `dog node info` and `dog node recovery` send
//! them: one implementation shared by our `dog` and the sheep's HTTP API.
//! Owns: STAT_SHEEP and STAT_RECOVERY and the decoding of their answers. Never: wording for
//! users, printing.

use crate::volumes::{Step, VolumeError};
use crate::Connection;
use proto::{opcode, Header, SdResult};

/// A node's store space, as STAT_SHEEP reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    pub size: u64,
    pub free: u64,
}

/// STAT_SHEEP: the store's size and free bytes.
pub async fn stat_sheep(c: &Connection) -> Result<Space, VolumeError> {
    let r = c.read(Header::request(opcode::STAT_SHEEP), 0).await?;
    match r.result() {
        SdResult::SUCCESS => Ok(Space {
            size: r.header.rsp_store_size(),
            free: r.header.rsp_store_free(),
        }),
        result => Err(VolumeError::Refused {
            step: Step::Stat,
            result,
        }),
    }
}

/// What STAT_RECOVERY says of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    pub running: bool,
    pub done: u64,
    pub total: u64,
    /// Why it is not done yet, if the node says (this sheep appends it to the original's
    /// 24-byte `struct recovery_state` for a reader that asks for more).
    pub problem: Option<String>,
}

/// STAT_RECOVERY.
pub async fn stat_recovery(c: &Connection) -> Result<Recovery, VolumeError> {
    let r = c.read(Header::request(opcode::STAT_RECOVERY), 256).await?;
    if r.result() != SdResult::SUCCESS || r.data.len() < 24 {
        let result = match r.result() {
            SdResult::SUCCESS => SdResult::INVALID_PARMS,
            e => e,
        };
        return Err(VolumeError::Refused {
            step: Step::Stat,
            result,
        });
    }
    let u64_at = |o: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&r.data[o..o + 8]);
        u64::from_le_bytes(a)
    };
    let problem = proto::cstr_bytes(&r.data[24..]);
    Ok(Recovery {
        running: r.data[0] != 0,
        done: u64_at(8),
        total: u64_at(16),
        problem: (!problem.is_empty()).then(|| String::from_utf8_lossy(problem).into_owned()),
    })
}
