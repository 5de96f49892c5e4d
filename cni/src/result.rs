//! What the plugin prints on stdout: the CNI spec's three result types
//! (SPEC.md §4 "Result Types": success, error, version), with serde.
//!
//! Results are written in 1.0.0 form; [`Success::for_version`] turns one into the
//! 0.3.x / 0.4.0 form (every `ips` entry carries `"version": "4"|"6"`), which is the
//! only difference between those versions for the fields twill uses. Fields this
//! crate does not know (from a `prevResult` written by another plugin) are kept
//! in `extra` and passed on unchanged.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::CniVersion;

/// The success result of ADD (SPEC.md §4 "Success").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Success {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub dns: Dns,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One entry of `interfaces`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The netns path for interfaces inside the sandbox; absent for host interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One entry of `ips`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IpConfig {
    /// `"4"` or `"6"`: present in 0.3.x / 0.4.0 results only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Address with prefix, e.g. `"10.244.1.2/32"`.
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One entry of `routes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The `dns` object; twill leaves DNS to the runtime (kubelet writes resolv.conf).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Success {
    /// Appends `other` (this plugin's own result) to `self` (a `prevResult`):
    /// interface indexes of `other` are shifted past `self`'s interfaces.
    pub fn chain(mut self, other: Success) -> Success {
        let offset = self.interfaces.len();
        self.interfaces.extend(other.interfaces);
        self.ips.extend(other.ips.into_iter().map(|mut ip| {
            ip.interface = ip.interface.map(|i| i + offset);
            ip
        }));
        self.routes.extend(other.routes);
        self.cni_version = other.cni_version;
        self
    }

    /// The same result in the form `version` prescribes.
    pub fn for_version(mut self, version: CniVersion) -> Success {
        self.cni_version = version.to_string();
        for ip in &mut self.ips {
            ip.version = if version.has_ip_version_field() {
                let v6 = ip.address.contains(':');
                Some(if v6 { "6" } else { "4" }.to_owned())
            } else {
                None
            };
        }
        self
    }
}

/// The answer to VERSION (SPEC.md §4 "Version").
#[derive(Debug, Serialize)]
pub struct VersionResult {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    #[serde(rename = "supportedVersions")]
    pub supported_versions: Vec<String>,
}

impl VersionResult {
    pub fn new() -> Self {
        VersionResult {
            cni_version: CniVersion::LATEST.to_string(),
            supported_versions: CniVersion::SUPPORTED
                .iter()
                .map(ToString::to_string)
                .collect(),
        }
    }
}

/// Well-known error codes (SPEC.md "Well-known Error Codes") and twill's own (100+).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 1: the config's `cniVersion` is not one this plugin supports.
    IncompatibleVersion,
    /// 2: a field of the network config that twill-cni does not support.
    UnsupportedField,
    /// 3: the container (its network namespace) does not exist.
    ContainerUnknown,
    /// 4: a missing or invalid `CNI_*` environment variable.
    InvalidEnvironment,
    /// 5: a system call (netlink, ioctl, socket I/O) failed.
    Io,
    /// 6: stdin is not valid JSON or does not decode into a network config.
    DecodeFailed,
    /// 7: the network config decodes but is not valid.
    InvalidConfig,
    /// 11: a transient failure (the agent's socket is not reachable); retry later.
    TryAgainLater,
    /// 100: the agent answered `"ok": false`.
    AgentRefused,
    /// 101: `CNI_IFNAME` already exists in the pod's network namespace.
    InterfaceExists,
    /// 102: CHECK found the pod's networking not as ADD left it.
    CheckFailed,
}

impl ErrorCode {
    pub fn code(self) -> u32 {
        match self {
            ErrorCode::IncompatibleVersion => 1,
            ErrorCode::UnsupportedField => 2,
            ErrorCode::ContainerUnknown => 3,
            ErrorCode::InvalidEnvironment => 4,
            ErrorCode::Io => 5,
            ErrorCode::DecodeFailed => 6,
            ErrorCode::InvalidConfig => 7,
            ErrorCode::TryAgainLater => 11,
            ErrorCode::AgentRefused => 100,
            ErrorCode::InterfaceExists => 101,
            ErrorCode::CheckFailed => 102,
        }
    }
}

/// An error as the spec wants it on stdout: `msg` is short, `details` names the
/// input at fault and what would be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}: {details}")]
pub struct CniError {
    pub code: ErrorCode,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: ErrorCode, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The JSON object printed on stdout, tagged with `cni_version`.
    pub fn to_json(&self, cni_version: &str) -> Value {
        serde_json::json!({
            "cniVersion": cni_version,
            "code": self.code.code(),
            "msg": self.msg,
            "details": self.details,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ours() -> Success {
        Success {
            cni_version: "1.0.0".into(),
            interfaces: vec![
                Interface {
                    name: "tw0123456789a".into(),
                    mac: Some("aa:aa:aa:aa:aa:aa".into()),
                    sandbox: None,
                    extra: Map::new(),
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some("bb:bb:bb:bb:bb:bb".into()),
                    sandbox: Some("/run/netns/x".into()),
                    extra: Map::new(),
                },
            ],
            ips: vec![IpConfig {
                version: None,
                address: "10.244.1.2/32".into(),
                gateway: Some("169.254.1.1".into()),
                interface: Some(1),
                extra: Map::new(),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".into(),
                gw: Some("169.254.1.1".into()),
                extra: Map::new(),
            }],
            dns: Dns::default(),
            extra: Map::new(),
        }
    }

    #[test]
    fn success_has_the_1_0_0_shape() {
        let v = serde_json::to_value(ours()).unwrap();
        assert_eq!(
            v,
            json!({
                "cniVersion": "1.0.0",
                "interfaces": [
                    {"name": "tw0123456789a", "mac": "aa:aa:aa:aa:aa:aa"},
                    {"name": "eth0", "mac": "bb:bb:bb:bb:bb:bb", "sandbox": "/run/netns/x"}
                ],
                "ips": [{"address": "10.244.1.2/32", "gateway": "169.254.1.1", "interface": 1}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}],
                "dns": {}
            })
        );
    }

    #[test]
    fn older_versions_get_the_ip_version_field() {
        let v = serde_json::to_value(ours().for_version(CniVersion::V0_4_0)).unwrap();
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["ips"][0]["version"], "4");
        // And back to 1.0.0 drops it again.
        let back = serde_json::from_value::<Success>(v)
            .unwrap()
            .for_version(CniVersion::V1_0_0);
        assert_eq!(
            serde_json::to_value(back).unwrap()["ips"][0].get("version"),
            None
        );
    }

    #[test]
    fn chaining_shifts_interface_indexes_and_keeps_unknown_fields() {
        let prev: Success = serde_json::from_value(json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "dummy0", "mtu": 1400}],
            "ips": [{"address": "192.0.2.1/24", "interface": 0}],
            "dns": {"nameservers": ["10.96.0.10"]},
            "somethingNew": true
        }))
        .unwrap();
        let v = serde_json::to_value(prev.chain(ours())).unwrap();
        assert_eq!(v["interfaces"][0]["mtu"], 1400);
        assert_eq!(v["interfaces"][2]["name"], "eth0");
        assert_eq!(v["ips"][1]["interface"], 2);
        assert_eq!(v["dns"]["nameservers"][0], "10.96.0.10");
        assert_eq!(v["somethingNew"], true);
    }

    #[test]
    fn error_json_has_the_spec_fields() {
        let e = CniError::new(
            ErrorCode::TryAgainLater,
            "agent unreachable",
            "socket /x: not found",
        );
        assert_eq!(
            e.to_json("1.0.0"),
            json!({"cniVersion": "1.0.0", "code": 11, "msg": "agent unreachable", "details": "socket /x: not found"})
        );
    }

    #[test]
    fn version_result_lists_what_we_support() {
        let v = serde_json::to_value(VersionResult::new()).unwrap();
        assert_eq!(
            v,
            json!({"cniVersion": "1.0.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0"]})
        );
    }
}
