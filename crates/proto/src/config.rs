//! The store's `config` file (40 bytes, `struct sheepdog_config`, format version 6).

use crate::le::*;

pub const SD_CONFIG_SIZE: usize = 40;
pub const SD_FORMAT_VERSION: u16 = 6;

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Config {
    pub ctime: u64,
    pub flags: u16,
    pub copies: u8,
    pub store: String,
    pub shutdown: bool,
    pub copy_policy: u8,
    pub block_size_shift: u8,
    pub version: u16,
    pub space: u64,
}

impl Config {
    pub fn encode(&self) -> [u8; SD_CONFIG_SIZE] {
        let mut b = [0u8; SD_CONFIG_SIZE];
        put_u64(&mut b, 0, self.ctime);
        put_u16(&mut b, 8, self.flags);
        b[10] = self.copies;
        let s = self.store.as_bytes();
        let l = s.len().min(crate::STORE_LEN - 1);
        b[11..11 + l].copy_from_slice(&s[..l]);
        b[27] = self.shutdown as u8;
        b[28] = self.copy_policy;
        b[29] = self.block_size_shift;
        put_u16(&mut b, 30, self.version);
        put_u64(&mut b, 32, self.space);
        b
    }

    pub fn decode(b: &[u8]) -> Option<Config> {
        if b.len() < SD_CONFIG_SIZE {
            return None;
        }
        Some(Config {
            ctime: u64_at(b, 0),
            flags: u16_at(b, 8),
            copies: b[10],
            store: String::from_utf8_lossy(crate::cstr_bytes(&b[11..27])).into_owned(),
            shutdown: b[27] != 0,
            copy_policy: b[28],
            block_size_shift: b[29],
            version: u16_at(b, 30),
            space: u64_at(b, 32),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn round_trip() {
        let c = Config {
            ctime: 1 << 40,
            flags: 4,
            copies: 3,
            store: "plain".into(),
            shutdown: true,
            copy_policy: 0,
            block_size_shift: 22,
            version: 6,
            space: 99,
        };
        assert_eq!(Config::decode(&c.encode()), Some(c));
    }
}
