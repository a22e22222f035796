//! Exit codes of the original (`include/exits.h`) and the failure every command returns:
//! the message to print on stderr and the code to exit with.
//! Owns: mapping result codes to exit codes. Never: printing.

use proto::SdResult;

pub const EXIT_SUCCESS: i32 = 0;
/// Command failed.
pub const EXIT_FAILURE: i32 = 1;
/// Connection or system failure.
pub const EXIT_SYSFAIL: i32 = 2;
/// The object (VDI, attribute) exists already.
pub const EXIT_EXISTS: i32 = 3;
/// The cluster is full.
pub const EXIT_FULL: i32 = 4;
/// The object (VDI, snapshot) is missing.
pub const EXIT_MISSING: i32 = 5;
/// Bad command line.
pub const EXIT_USAGE: i32 = 64;
/// Exits 64 without the subcommand's usage (where the original's command calls
/// `exit(EXIT_USAGE)` itself).
pub const EXIT_USAGE_BARE: i32 = 0x1_0040;

/// Why a command stopped: `msg` (may be empty, may hold several lines) goes to stderr.
/// With `EXIT_USAGE` the runner also prints the subcommand's usage, as the original does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fail {
    pub msg: String,
    pub code: i32,
}

impl Fail {
    pub fn new(code: i32, msg: impl Into<String>) -> Fail {
        Fail {
            msg: msg.into(),
            code,
        }
    }

    /// Stop with `code` and nothing to say (e.g. the user answered "no").
    pub fn quiet(code: i32) -> Fail {
        Fail::new(code, "")
    }

    /// A bad argument: the message, then the subcommand's usage.
    pub fn usage(msg: impl Into<String>) -> Fail {
        Fail::new(EXIT_USAGE, msg)
    }

    /// A bad argument the original reports and exits 64 on, without the usage.
    pub fn bare_usage(msg: impl Into<String>) -> Fail {
        Fail::new(EXIT_USAGE_BARE, msg)
    }

    /// Appends a line (the original's follow-up message).
    pub fn then(mut self, line: &str) -> Fail {
        self.msg = if self.msg.is_empty() {
            line.to_string()
        } else {
            format!("{}\n{line}", self.msg)
        };
        self
    }
}

pub type Res<T> = Result<T, Fail>;

/// The exit code for a failed result: missing VDI/snapshot -> 5, existing VDI -> 3, full
/// cluster -> 4, anything else the command's own `default`.
pub fn code_for(r: SdResult, default: i32) -> i32 {
    match r {
        SdResult::NO_VDI | SdResult::NO_TAG => EXIT_MISSING,
        SdResult::VDI_EXIST => EXIT_EXISTS,
        SdResult::FULL_VDI => EXIT_FULL,
        _ => default,
    }
}

/// "<what>: <result text>" with the exit code `code_for` picks.
pub fn failed(what: &str, r: SdResult, default: i32) -> Fail {
    Fail::new(code_for(r, default), format!("{what}: {}", r.text()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        assert_eq!(code_for(SdResult::NO_VDI, EXIT_FAILURE), EXIT_MISSING);
        assert_eq!(code_for(SdResult::VDI_EXIST, EXIT_FAILURE), EXIT_EXISTS);
        assert_eq!(code_for(SdResult::EIO, EXIT_SYSFAIL), EXIT_SYSFAIL);
        let f = failed("Failed to create VDI a", SdResult::VDI_EXIST, EXIT_FAILURE);
        assert_eq!(f.msg, "Failed to create VDI a: VDI exists already");
        assert_eq!(f.code, EXIT_EXISTS);
        assert_eq!(
            f.then("x").msg,
            "Failed to create VDI a: VDI exists already\nx"
        );
    }
}
