//! The NBD protocol (newstyle fixed handshake, simple and structured replies), as the
//! `nbd` project's protocol document gives it. All integers big endian.
//! Owns: magic numbers, option/command/flag values, and the encode/decode of option requests,
//! option replies, transmission requests and replies. Never: I/O or export semantics.

/// "NBDMAGIC": first 8 bytes the server sends.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// "IHAVEOPT": the newstyle magic; also prefixes every option request.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Prefix of every option reply.
pub const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flags (server) and client flags.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1;
pub const FLAG_NO_ZEROES: u16 = 2;
pub const CLIENT_FLAG_FIXED_NEWSTYLE: u32 = 1;
pub const CLIENT_FLAG_NO_ZEROES: u32 = 2;

/// Option types.
pub mod opt {
    pub const EXPORT_NAME: u32 = 1;
    pub const ABORT: u32 = 2;
    pub const LIST: u32 = 3;
    pub const STARTTLS: u32 = 5;
    pub const INFO: u32 = 6;
    pub const GO: u32 = 7;
    pub const STRUCTURED_REPLY: u32 = 8;
    pub const LIST_META_CONTEXT: u32 = 9;
    pub const SET_META_CONTEXT: u32 = 10;
}

/// Option reply types.
pub mod rep {
    pub const ACK: u32 = 1;
    pub const SERVER: u32 = 2;
    pub const INFO: u32 = 3;
    pub const META_CONTEXT: u32 = 4;
    const ERR: u32 = 1 << 31;
    pub const ERR_UNSUP: u32 = ERR | 1;
    pub const ERR_POLICY: u32 = ERR | 2;
    pub const ERR_INVALID: u32 = ERR | 3;
    pub const ERR_PLATFORM: u32 = ERR | 4;
    pub const ERR_TLS_REQD: u32 = ERR | 5;
    pub const ERR_UNKNOWN: u32 = ERR | 6;
    pub const ERR_SHUTDOWN: u32 = ERR | 7;
    pub const ERR_BLOCK_SIZE_REQD: u32 = ERR | 8;
    pub const ERR_TOO_BIG: u32 = ERR | 9;
}

/// NBD_INFO types inside NBD_REP_INFO.
pub mod info {
    pub const EXPORT: u16 = 0;
    pub const NAME: u16 = 1;
    pub const DESCRIPTION: u16 = 2;
    pub const BLOCK_SIZE: u16 = 3;
}

/// Transmission flags of an export.
pub mod tflag {
    pub const HAS_FLAGS: u16 = 1;
    pub const READ_ONLY: u16 = 1 << 1;
    pub const SEND_FLUSH: u16 = 1 << 2;
    pub const SEND_FUA: u16 = 1 << 3;
    pub const SEND_TRIM: u16 = 1 << 5;
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
    pub const SEND_DF: u16 = 1 << 7;
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
    pub const SEND_FAST_ZERO: u16 = 1 << 11;
}

/// Command types.
pub mod cmd {
    pub const READ: u16 = 0;
    pub const WRITE: u16 = 1;
    pub const DISC: u16 = 2;
    pub const FLUSH: u16 = 3;
    pub const TRIM: u16 = 4;
    pub const CACHE: u16 = 5;
    pub const WRITE_ZEROES: u16 = 6;
    pub const BLOCK_STATUS: u16 = 7;

    /// The command's name ("WRITE_ZEROES"), "UNKNOWN" for another number.
    pub fn name(kind: u16) -> &'static str {
        match kind {
            READ => "READ",
            WRITE => "WRITE",
            DISC => "DISC",
            FLUSH => "FLUSH",
            TRIM => "TRIM",
            CACHE => "CACHE",
            WRITE_ZEROES => "WRITE_ZEROES",
            BLOCK_STATUS => "BLOCK_STATUS",
            _ => "UNKNOWN",
        }
    }
}

/// Command flags.
pub mod cflag {
    pub const FUA: u16 = 1;
    pub const NO_HOLE: u16 = 1 << 1;
    pub const DF: u16 = 1 << 2;
    pub const REQ_ONE: u16 = 1 << 3;
    pub const FAST_ZERO: u16 = 1 << 4;
}

/// Structured reply chunk types and flags.
pub mod chunk {
    pub const FLAG_DONE: u16 = 1;
    pub const NONE: u16 = 0;
    pub const OFFSET_DATA: u16 = 1;
    pub const OFFSET_HOLE: u16 = 2;
    pub const BLOCK_STATUS: u16 = 5;
    pub const ERROR: u16 = (1 << 15) | 1;
}

/// Error values of replies (Linux errno numbers, as the protocol fixes them).
pub mod errno {
    pub const EPERM: u32 = 1;
    pub const EIO: u32 = 5;
    pub const ENOMEM: u32 = 12;
    pub const EINVAL: u32 = 22;
    pub const ENOSPC: u32 = 28;
    pub const EOVERFLOW: u32 = 75;
    pub const ENOTSUP: u32 = 95;
    pub const ESHUTDOWN: u32 = 108;

    /// The error's name ("EPERM"), "EUNKNOWN" for another number.
    pub fn name(e: u32) -> &'static str {
        match e {
            EPERM => "EPERM",
            EIO => "EIO",
            ENOMEM => "ENOMEM",
            EINVAL => "EINVAL",
            ENOSPC => "ENOSPC",
            EOVERFLOW => "EOVERFLOW",
            ENOTSUP => "ENOTSUP",
            ESHUTDOWN => "ESHUTDOWN",
            _ => "EUNKNOWN",
        }
    }
}

/// base:allocation block states.
pub const STATE_HOLE: u32 = 1;
pub const STATE_ZERO: u32 = 2;
/// The one metadata context served.
pub const BASE_ALLOCATION: &str = "base:allocation";

/// Size of an option request header (magic, option, length) and a transmission request.
pub const OPTION_HEADER_SIZE: usize = 16;
pub const REQUEST_SIZE: usize = 28;

fn be16(b: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([b[off], b[off + 1]])
}
fn be32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_be_bytes(a)
}
fn be64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_be_bytes(a)
}

/// What the server sends first: magic, IHAVEOPT and its handshake flags (18 bytes).
pub fn server_greeting() -> [u8; 18] {
    let mut b = [0u8; 18];
    b[..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    b[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    b[16..].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    b
}

/// The header of an option request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    pub magic: u64,
    pub option: u32,
    pub length: u32,
}

impl OptionHeader {
    pub fn decode(b: &[u8; OPTION_HEADER_SIZE]) -> OptionHeader {
        OptionHeader {
            magic: be64(b, 0),
            option: be32(b, 8),
            length: be32(b, 12),
        }
    }
}

/// An option reply: header (magic, option, type, length) and its data.
pub fn option_reply(option: u32, reply: u32, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(20 + data.len());
    b.extend_from_slice(&REPLY_MAGIC.to_be_bytes());
    b.extend_from_slice(&option.to_be_bytes());
    b.extend_from_slice(&reply.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    b
}

/// NBD_REP_SERVER data: one export name and its description.
pub fn rep_server(name: &str, description: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(4 + name.len() + description.len());
    b.extend_from_slice(&(name.len() as u32).to_be_bytes());
    b.extend_from_slice(name.as_bytes());
    b.extend_from_slice(description.as_bytes());
    b
}

/// NBD_INFO_EXPORT data: size and transmission flags.
pub fn info_export(size: u64, flags: u16) -> Vec<u8> {
    let mut b = Vec::with_capacity(12);
    b.extend_from_slice(&info::EXPORT.to_be_bytes());
    b.extend_from_slice(&size.to_be_bytes());
    b.extend_from_slice(&flags.to_be_bytes());
    b
}

/// NBD_INFO_BLOCK_SIZE data: minimum, preferred and maximum block sizes.
pub fn info_block_size(min: u32, preferred: u32, max: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(14);
    b.extend_from_slice(&info::BLOCK_SIZE.to_be_bytes());
    b.extend_from_slice(&min.to_be_bytes());
    b.extend_from_slice(&preferred.to_be_bytes());
    b.extend_from_slice(&max.to_be_bytes());
    b
}

/// NBD_INFO_NAME / NBD_INFO_DESCRIPTION data.
pub fn info_text(kind: u16, text: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(2 + text.len());
    b.extend_from_slice(&kind.to_be_bytes());
    b.extend_from_slice(text.as_bytes());
    b
}

/// The reply to NBD_OPT_EXPORT_NAME: size, flags, and 124 zero bytes unless NO_ZEROES.
pub fn export_name_reply(size: u64, flags: u16, no_zeroes: bool) -> Vec<u8> {
    let mut b = Vec::with_capacity(134);
    b.extend_from_slice(&size.to_be_bytes());
    b.extend_from_slice(&flags.to_be_bytes());
    if !no_zeroes {
        b.extend_from_slice(&[0u8; 124]);
    }
    b
}

/// Why option data does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

/// Reads a u32-length-prefixed string at `*pos`.
fn take_string(d: &[u8], pos: &mut usize, what: &'static str) -> Result<String, Malformed> {
    if d.len() < *pos + 4 {
        return Err(Malformed(what));
    }
    let n = be32(d, *pos) as usize;
    *pos += 4;
    if d.len() - *pos < n {
        return Err(Malformed(what));
    }
    let s = std::str::from_utf8(&d[*pos..*pos + n]).map_err(|_| Malformed("name is not UTF-8"))?;
    *pos += n;
    Ok(s.to_string())
}

/// NBD_OPT_INFO / NBD_OPT_GO data: export name and the information types asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    pub name: String,
    pub requests: Vec<u16>,
}

impl InfoRequest {
    pub fn decode(d: &[u8]) -> Result<InfoRequest, Malformed> {
        let mut pos = 0;
        let name = take_string(d, &mut pos, "export name length past the option")?;
        if d.len() < pos + 2 {
            return Err(Malformed("missing information request count"));
        }
        let n = be16(d, pos) as usize;
        pos += 2;
        if d.len() - pos != n * 2 {
            return Err(Malformed(
                "information request count does not match the length",
            ));
        }
        let requests = (0..n).map(|i| be16(d, pos + 2 * i)).collect();
        Ok(InfoRequest { name, requests })
    }
}

/// NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT data: export name and queries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaContextRequest {
    pub name: String,
    pub queries: Vec<String>,
}

impl MetaContextRequest {
    pub fn decode(d: &[u8]) -> Result<MetaContextRequest, Malformed> {
        let mut pos = 0;
        let name = take_string(d, &mut pos, "export name length past the option")?;
        if d.len() < pos + 4 {
            return Err(Malformed("missing query count"));
        }
        let n = be32(d, pos) as usize;
        pos += 4;
        let mut queries = Vec::new();
        for _ in 0..n {
            queries.push(take_string(d, &mut pos, "query length past the option")?);
        }
        if pos != d.len() {
            return Err(Malformed("trailing bytes after the queries"));
        }
        Ok(MetaContextRequest { name, queries })
    }
}

/// NBD_REP_META_CONTEXT data: context id and name.
pub fn rep_meta_context(id: u32, name: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(4 + name.len());
    b.extend_from_slice(&id.to_be_bytes());
    b.extend_from_slice(name.as_bytes());
    b
}

/// A transmission request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub kind: u16,
    pub handle: u64,
    pub offset: u64,
    pub length: u32,
}

impl Request {
    /// Decodes a request; `None` when the magic is wrong (the stream is then unusable).
    pub fn decode(b: &[u8; REQUEST_SIZE]) -> Option<Request> {
        if be32(b, 0) != REQUEST_MAGIC {
            return None;
        }
        Some(Request {
            flags: be16(b, 4),
            kind: be16(b, 6),
            handle: be64(b, 8),
            offset: be64(b, 16),
            length: be32(b, 24),
        })
    }

    pub fn encode(&self) -> [u8; REQUEST_SIZE] {
        let mut b = [0u8; REQUEST_SIZE];
        b[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.kind.to_be_bytes());
        b[8..16].copy_from_slice(&self.handle.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..].copy_from_slice(&self.length.to_be_bytes());
        b
    }
}

/// A simple reply header (16 bytes); read data follows it.
pub fn simple_reply(handle: u64, error: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&error.to_be_bytes());
    b[8..].copy_from_slice(&handle.to_be_bytes());
    b
}

/// A structured reply chunk header (20 bytes); `length` bytes of payload follow.
pub fn chunk_header(handle: u64, flags: u16, kind: u16, length: u32) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&flags.to_be_bytes());
    b[6..8].copy_from_slice(&kind.to_be_bytes());
    b[8..16].copy_from_slice(&handle.to_be_bytes());
    b[16..].copy_from_slice(&length.to_be_bytes());
    b
}

/// A whole NBD_REPLY_TYPE_ERROR chunk (final) with a message.
pub fn error_chunk(handle: u64, error: u32, message: &str) -> Vec<u8> {
    let msg = &message.as_bytes()[..message.len().min(4096)];
    let mut b = chunk_header(handle, chunk::FLAG_DONE, chunk::ERROR, 6 + msg.len() as u32).to_vec();
    b.extend_from_slice(&error.to_be_bytes());
    b.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    b.extend_from_slice(msg);
    b
}

/// A whole NBD_REPLY_TYPE_OFFSET_HOLE chunk.
pub fn hole_chunk(handle: u64, flags: u16, offset: u64, length: u32) -> Vec<u8> {
    let mut b = chunk_header(handle, flags, chunk::OFFSET_HOLE, 12).to_vec();
    b.extend_from_slice(&offset.to_be_bytes());
    b.extend_from_slice(&length.to_be_bytes());
    b
}

/// A whole NBD_REPLY_TYPE_BLOCK_STATUS chunk: context id then (length, flags) extents.
pub fn block_status_chunk(
    handle: u64,
    flags: u16,
    context: u32,
    extents: &[(u32, u32)],
) -> Vec<u8> {
    let len = 4 + 8 * extents.len() as u32;
    let mut b = chunk_header(handle, flags, chunk::BLOCK_STATUS, len).to_vec();
    b.extend_from_slice(&context.to_be_bytes());
    for (l, f) in extents {
        b.extend_from_slice(&l.to_be_bytes());
        b.extend_from_slice(&f.to_be_bytes());
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_bytes() {
        assert_eq!(&server_greeting()[..8], b"NBDMAGIC");
        assert_eq!(&server_greeting()[8..16], b"IHAVEOPT");
        assert_eq!(&server_greeting()[16..], &[0, 3]);
    }

    #[test]
    fn request_round_trip() {
        let r = Request {
            flags: cflag::FUA,
            kind: cmd::WRITE,
            handle: 0x1122334455667788,
            offset: 1 << 40,
            length: 4096,
        };
        assert_eq!(Request::decode(&r.encode()), Some(r));
        let mut bad = r.encode();
        bad[0] ^= 1;
        assert_eq!(Request::decode(&bad), None);
    }

    #[test]
    fn info_request() {
        let mut d = Vec::new();
        d.extend_from_slice(&3u32.to_be_bytes());
        d.extend_from_slice(b"Bob");
        d.extend_from_slice(&2u16.to_be_bytes());
        d.extend_from_slice(&info::NAME.to_be_bytes());
        d.extend_from_slice(&info::BLOCK_SIZE.to_be_bytes());
        let r = InfoRequest::decode(&d).unwrap();
        assert_eq!(r.name, "Bob");
        assert_eq!(r.requests, vec![info::NAME, info::BLOCK_SIZE]);
        assert!(InfoRequest::decode(&d[..d.len() - 1]).is_err());
        d[3] = 200;
        assert!(InfoRequest::decode(&d).is_err());
    }

    #[test]
    fn meta_context_request() {
        let mut d = Vec::new();
        d.extend_from_slice(&0u32.to_be_bytes());
        d.extend_from_slice(&1u32.to_be_bytes());
        d.extend_from_slice(&15u32.to_be_bytes());
        d.extend_from_slice(BASE_ALLOCATION.as_bytes());
        let r = MetaContextRequest::decode(&d).unwrap();
        assert_eq!(r.name, "");
        assert_eq!(r.queries, vec![BASE_ALLOCATION.to_string()]);
        assert!(MetaContextRequest::decode(&d[..10]).is_err());
    }

    #[test]
    fn chunks() {
        let c = error_chunk(7, errno::EPERM, "locked");
        assert_eq!(c.len(), 20 + 6 + 6);
        assert_eq!(be32(&c, 16), 12);
        let b = block_status_chunk(7, chunk::FLAG_DONE, 1, &[(4096, 3)]);
        assert_eq!(b.len(), 20 + 4 + 8);
        assert_eq!(be16(&b, 6), chunk::BLOCK_STATUS);
    }
}
