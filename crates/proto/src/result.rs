//! Result codes (SD_RES_*) and the texts the original `dog` prints for them (`sd_strerror`).

/// A result code as carried in a response header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SdResult(pub u32);

macro_rules! results {
    ($($name:ident = $val:expr, $text:expr;)*) => {
        impl SdResult {
            $(pub const $name: SdResult = SdResult($val);)*

            /// The original's description of this code.
            pub fn text(self) -> String {
                match self.0 {
                    $($val => $text.to_string(),)*
                    other => format!("Invalid error code {:x}", other),
                }
            }

            /// The constant's name without the SD_RES_ prefix, for logs and JSON.
            pub fn name(self) -> &'static str {
                match self.0 {
                    $($val => stringify!($name),)*
                    _ => "INVALID",
                }
            }
        }
    };
}

results! {
    SUCCESS = 0x00, "Success";
    UNKNOWN = 0x01, "Unknown error";
    NO_OBJ = 0x02, "No object found";
    EIO = 0x03, "I/O error";
    VDI_EXIST = 0x04, "VDI exists already";
    INVALID_PARMS = 0x05, "Invalid parameters";
    SYSTEM_ERROR = 0x06, "System error";
    VDI_LOCKED = 0x07, "VDI is already locked";
    NO_VDI = 0x08, "No VDI found";
    NO_BASE_VDI = 0x09, "No base VDI found";
    VDI_READ = 0x0a, "Failed to read from requested VDI";
    VDI_WRITE = 0x0b, "Failed to write to requested VDI";
    BASE_VDI_READ = 0x0c, "Failed to read from base VDI";
    BASE_VDI_WRITE = 0x0d, "Failed to write to base VDI";
    NO_TAG = 0x0e, "Failed to find requested tag";
    STARTUP = 0x0f, "System is still booting";
    VDI_NOT_LOCKED = 0x10, "VDI is not locked";
    SHUTDOWN = 0x11, "System is shutting down";
    NO_MEM = 0x12, "Out of memory on server";
    FULL_VDI = 0x13, "Maximum number of VDIs reached";
    VER_MISMATCH = 0x14, "Protocol version mismatch";
    NO_SPACE = 0x15, "Server has no space for new objects";
    WAIT_FOR_FORMAT = 0x16, "Waiting for cluster to be formatted";
    WAIT_FOR_JOIN = 0x17, "Waiting for other nodes to join cluster";
    JOIN_FAILED = 0x18, "Node has failed to join cluster";
    HALT = 0x19, "IO has halted as there are not enough living nodes";
    READONLY = 0x1a, "Object is read-only";
    INODE_INVALIDATED = 0x1d, "Inode object is invalidated";
    OLD_NODE_VER = 0x81, "Request has an old epoch";
    NEW_NODE_VER = 0x82, "Request has a new epoch";
    NOT_FORMATTED = 0x83, "Cluster has not been formatted";
    INVALID_CTIME = 0x84, "Creation times differ";
    INVALID_EPOCH = 0x85, "Invalid epoch";
    NETWORK_ERROR = 0x86, "Network error between sheep";
    NO_CACHE = 0x87, "No cache object found";
    BUFFER_SMALL = 0x88, "The buffer is too small";
    FORCE_RECOVER = 0x89, "Cluster is running/halted and cannot be force recovered";
    NO_STORE = 0x8a, "Targeted backend store is not found";
    NO_SUPPORT = 0x8b, "Operation is not supported";
    NODE_IN_RECOVERY = 0x8c, "Targeted node is in recovery";
    KILLED = 0x8d, "Node is killed";
    OID_EXIST = 0x8e, "Object ID exists already";
    AGAIN = 0x8f, "Ask to try again";
    STALE_OBJ = 0x90, "Object may be stale";
    CLUSTER_ERROR = 0x91, "Cluster driver error";
    VDI_NOT_EMPTY = 0x92, "VDI is not empty";
    NOT_FOUND = 0x93, "Cannot found target";
    INCOMPLETE = 0x94, "Incomplete";
    COLLECTING_CINFO = 0x95, "Collecting cluster info";
    GATEWAY_MODE = 0x97, "Targeted node is gateway mode";
    INVALID_VNODES_STRATEGY = 0x98, "Invalid cluster vnodes strategy";
    NO_CHECKPOINT_ENTRY = 0x99, "No checkpoint entry";
}

impl SdResult {
    pub fn is_ok(self) -> bool {
        self == SdResult::SUCCESS
    }
}

impl std::fmt::Display for SdResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn texts() {
        assert_eq!(SdResult::NO_VDI.text(), "No VDI found");
        assert_eq!(SdResult(0x77).text(), "Invalid error code 77");
        assert_eq!(SdResult::WAIT_FOR_FORMAT.name(), "WAIT_FOR_FORMAT");
    }
}
