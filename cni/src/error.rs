//! The CNI error object (`{"cniVersion","code","msg","details"}`) and the spec's error codes.

use serde::Serialize;

/// The spec's well-known error codes (plus libcni's 8 and 999).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Code {
    /// 1: incompatible CNI version.
    IncompatibleVersion = 1,
    /// 2: unsupported field in the network configuration.
    UnsupportedField = 2,
    /// 3: container unknown or does not exist.
    UnknownContainer = 3,
    /// 4: invalid or missing environment variable.
    InvalidEnv = 4,
    /// 5: I/O failure.
    Io = 5,
    /// 6: failed to decode content.
    Decode = 6,
    /// 7: invalid network configuration.
    InvalidConfig = 7,
    /// 8: invalid netns (libcni).
    InvalidNetns = 8,
    /// 11: try again later.
    TryAgainLater = 11,
    /// 50: STATUS: the plugin is not available.
    NotAvailable = 50,
    /// 51: STATUS: not available, existing containers may have limited connectivity.
    NotAvailableLimited = 51,
    /// 999: internal error.
    Internal = 999,
}

/// A CNI error as printed on stdout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("CNI error {code}: {msg}{}", if details.is_empty() { String::new() } else { format!(" ({details})") })]
pub struct CniError {
    /// Version of the configuration (filled in by the dispatcher).
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// The error code.
    pub code: u32,
    /// A short message.
    pub msg: String,
    /// Longer details.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    /// An error with a code and message.
    pub fn new(code: Code, msg: impl Into<String>) -> Self {
        CniError {
            cni_version: String::new(),
            code: code as u32,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// Adds details.
    pub fn details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// The JSON text printed on stdout.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self)
            .unwrap_or_else(|_| format!("{{\"code\":{},\"msg\":\"internal\"}}", self.code))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_shape() {
        let mut e = CniError::new(Code::IncompatibleVersion, "incompatible CNI versions")
            .details("config is \"9.9.9\"");
        e.cni_version = "1.1.0".into();
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(v["code"], 1);
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(v["msg"], "incompatible CNI versions");
        assert_eq!(v["details"], "config is \"9.9.9\"");
        let e = CniError::new(Code::Internal, "x");
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(v["code"], 999);
        assert!(v.get("details").is_none());
    }

    #[test]
    fn codes_match_spec() {
        let codes = [
            (Code::IncompatibleVersion, 1),
            (Code::UnsupportedField, 2),
            (Code::UnknownContainer, 3),
            (Code::InvalidEnv, 4),
            (Code::Io, 5),
            (Code::Decode, 6),
            (Code::InvalidConfig, 7),
            (Code::InvalidNetns, 8),
            (Code::TryAgainLater, 11),
            (Code::NotAvailable, 50),
            (Code::NotAvailableLimited, 51),
            (Code::Internal, 999),
        ];
        for (c, n) in codes {
            assert_eq!(c as u32, n);
        }
    }
}
