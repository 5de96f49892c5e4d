//! What the runtime hands the plugin: the `CNI_*` environment variables (SPEC.md §2
//! "Parameters") and the network configuration on stdin (SPEC.md §1, §3 "Deriving
//! execution configuration"). Everything here is checked before any side effect, and
//! every error names the input at fault and what would be accepted.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde_json::{Map, Value};

use crate::result::{CniError, ErrorCode, Success};

/// Where the agent listens unless the network config says `"socket"`.
pub const DEFAULT_SOCKET: &str = "/run/twill/twill.sock";

/// A CNI spec version this plugin speaks. Results are built in 1.0.0 form and
/// converted (see `result::Success::for_version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CniVersion {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
}

impl CniVersion {
    pub const SUPPORTED: [CniVersion; 4] = [
        CniVersion::V0_3_0,
        CniVersion::V0_3_1,
        CniVersion::V0_4_0,
        CniVersion::V1_0_0,
    ];
    pub const LATEST: CniVersion = CniVersion::V1_0_0;

    pub fn parse(s: &str) -> Option<CniVersion> {
        CniVersion::SUPPORTED.into_iter().find(|v| v.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CniVersion::V0_3_0 => "0.3.0",
            CniVersion::V0_3_1 => "0.3.1",
            CniVersion::V0_4_0 => "0.4.0",
            CniVersion::V1_0_0 => "1.0.0",
        }
    }

    /// 0.3.x and 0.4.0 results carry `"version"` in each `ips` entry; 1.0.0 dropped it.
    pub fn has_ip_version_field(self) -> bool {
        self < CniVersion::V1_0_0
    }

    /// CHECK exists from 0.4.0 on.
    pub fn has_check(self) -> bool {
        self >= CniVersion::V0_4_0
    }

    fn supported_list() -> String {
        CniVersion::SUPPORTED.map(CniVersion::as_str).join(", ")
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The network configuration twill-cni reads from stdin.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub cni_version: CniVersion,
    pub name: String,
    /// The agent's Unix socket (`"socket"`, default [`DEFAULT_SOCKET`]).
    pub socket: PathBuf,
    /// The previous plugin's result (ADD in a chain) or the last ADD's (CHECK, DEL).
    pub prev_result: Option<Success>,
}

/// Keys of the network config that twill-cni reads or knowingly ignores; others are
/// logged at debug level and ignored (the spec lets plugins define their own keys).
const KNOWN_KEYS: &[&str] = &[
    "cniVersion",
    "name",
    "type",
    "socket",
    "prevResult",
    "args",
    "runtimeConfig",
    "dns",
    "capabilities",
];

impl NetConf {
    /// Parses stdin. Errors: 6 when it is not a JSON object, 1 for a `cniVersion`
    /// this plugin does not speak, 2 for `ipam` (twill allocates through its agent),
    /// 7 for a missing or malformed required field.
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        let value: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                ErrorCode::DecodeFailed,
                "failed to decode the network configuration",
                format!(
                    "stdin is not valid JSON ({e}); expected an object like \
                     {{\"cniVersion\":\"1.0.0\",\"name\":\"twill\",\"type\":\"twill-cni\"}}"
                ),
            )
        })?;
        let Value::Object(obj) = value else {
            return Err(CniError::new(
                ErrorCode::DecodeFailed,
                "failed to decode the network configuration",
                format!(
                    "stdin holds a JSON {}, expected a JSON object",
                    json_kind(&value)
                ),
            ));
        };

        let cni_version = match obj.get("cniVersion") {
            None => {
                return Err(invalid(
                    "\"cniVersion\" is missing; it is required (e.g. \"1.0.0\")",
                ));
            }
            Some(Value::String(s)) => CniVersion::parse(s).ok_or_else(|| {
                CniError::new(
                    ErrorCode::IncompatibleVersion,
                    "incompatible CNI version",
                    format!(
                        "network config has cniVersion \"{s}\"; twill-cni supports {}",
                        CniVersion::supported_list()
                    ),
                )
            })?,
            Some(other) => {
                return Err(invalid(format!(
                    "\"cniVersion\" is a JSON {}; expected a string such as \"1.0.0\"",
                    json_kind(other)
                )));
            }
        };

        let name = required_string(&obj, "name")?;
        if !valid_network_name(&name) {
            return Err(invalid(format!(
                "\"name\" is \"{name}\"; it must start with a letter or digit, followed by \
                 letters, digits, '_', '.' or '-'"
            )));
        }
        required_string(&obj, "type")?;

        if let Some(ipam) = obj.get("ipam") {
            return Err(CniError::new(
                ErrorCode::UnsupportedField,
                "unsupported field in network configuration",
                format!(
                    "\"ipam\": {ipam}: twill-cni takes addresses from the twill agent, not from \
                     an IPAM plugin; remove \"ipam\""
                ),
            ));
        }

        let socket = match obj.get("socket") {
            None => PathBuf::from(DEFAULT_SOCKET),
            Some(Value::String(s)) if s.starts_with('/') => PathBuf::from(s),
            Some(other) => {
                return Err(invalid(format!(
                    "\"socket\" is {other}; expected an absolute path such as \"{DEFAULT_SOCKET}\""
                )));
            }
        };

        let prev_result = match obj.get("prevResult") {
            None | Some(Value::Null) => None,
            Some(v) => Some(serde_json::from_value::<Success>(v.clone()).map_err(|e| {
                invalid(format!("\"prevResult\" is not a CNI result ({e}); expected the result of the previous ADD"))
            })?),
        };

        for key in obj.keys().filter(|k| !KNOWN_KEYS.contains(&k.as_str())) {
            tracing::debug!(key = %key, "ignoring network config key twill-cni does not use");
        }

        Ok(NetConf {
            cni_version,
            name,
            socket,
            prev_result,
        })
    }
}

fn invalid(details: impl Into<String>) -> CniError {
    CniError::new(
        ErrorCode::InvalidConfig,
        "invalid network configuration",
        details,
    )
}

fn required_string(obj: &Map<String, Value>, key: &str) -> Result<String, CniError> {
    match obj.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        None => Err(invalid(format!("\"{key}\" is missing; it is required"))),
        Some(other) => Err(invalid(format!(
            "\"{key}\" is {other}; expected a non-empty string"
        ))),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// SPEC.md §1: alphanumeric first, then alphanumerics, `_`, `.` or `-`.
/// The same rule applies to `CNI_CONTAINERID` (SPEC.md §2).
fn valid_network_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
}

impl Command {
    pub fn from_env(value: Option<&str>) -> Result<Command, CniError> {
        match value {
            Some("ADD") => Ok(Command::Add),
            Some("DEL") => Ok(Command::Del),
            Some("CHECK") => Ok(Command::Check),
            Some("VERSION") => Ok(Command::Version),
            Some(other) => Err(env_error(format!(
                "CNI_COMMAND is \"{other}\"; twill-cni (CNI 1.0.0) accepts ADD, DEL, CHECK or VERSION"
            ))),
            None => Err(env_error(
                "CNI_COMMAND is not set; expected ADD, DEL, CHECK or VERSION",
            )),
        }
    }
}

/// The per-attachment parameters of ADD, DEL and CHECK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub container_id: String,
    /// `CNI_NETNS`: required for ADD and CHECK, optional for DEL.
    pub netns: Option<PathBuf>,
    pub ifname: String,
    /// Kubernetes namespace of the pod (`K8S_POD_NAMESPACE`, default `"default"`).
    pub pod_namespace: String,
    /// Pod name (`K8S_POD_NAME`, default the container id).
    pub pod_name: String,
}

impl Attachment {
    /// Reads the attachment from environment lookups (`env("CNI_IFNAME")` …).
    pub fn from_env(
        command: Command,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Attachment, CniError> {
        let container_id = env("CNI_CONTAINERID").unwrap_or_default();
        if !valid_network_name(&container_id) {
            return Err(env_error(format!(
                "CNI_CONTAINERID is \"{container_id}\"; expected a non-empty id starting with a letter \
                 or digit, followed by letters, digits, '_', '.' or '-'"
            )));
        }
        let ifname = env("CNI_IFNAME").unwrap_or_default();
        if !valid_ifname(&ifname) {
            return Err(env_error(format!(
                "CNI_IFNAME is \"{ifname}\"; expected a Linux interface name: 1 to 15 bytes, \
                 no '/', ':' or whitespace, not \".\" or \"..\""
            )));
        }
        let netns = env("CNI_NETNS")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        if netns.is_none() && command != Command::Del {
            return Err(env_error(
                "CNI_NETNS is not set; ADD and CHECK need the path of the pod's network namespace",
            ));
        }
        let args = parse_cni_args(&env("CNI_ARGS").unwrap_or_default())?;
        let pod_namespace = args
            .get("K8S_POD_NAMESPACE")
            .cloned()
            .unwrap_or_else(|| "default".to_owned());
        let pod_name = args
            .get("K8S_POD_NAME")
            .cloned()
            .unwrap_or_else(|| container_id.clone());
        Ok(Attachment {
            container_id,
            netns,
            ifname,
            pod_namespace,
            pod_name,
        })
    }
}

fn env_error(details: impl Into<String>) -> CniError {
    CniError::new(
        ErrorCode::InvalidEnvironment,
        "invalid environment variables",
        details,
    )
}

/// Linux's `dev_valid_name`: 1..=15 bytes, not `.`/`..`, no `/`, `:` or whitespace.
fn valid_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() < 16
        && s != "."
        && s != ".."
        && !s
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0)
}

/// Parses `CNI_ARGS`: `KEY=VALUE` pairs separated by `;` (SPEC.md §2). An empty
/// string is no arguments; a pair without `=` or with an empty key is an error (code 4).
pub fn parse_cni_args(s: &str) -> Result<BTreeMap<String, String>, CniError> {
    let mut out = BTreeMap::new();
    for pair in s.split(';').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                out.insert(k.to_owned(), v.to_owned());
            }
            _ => {
                return Err(env_error(format!(
                    "CNI_ARGS has \"{pair}\"; expected KEY=VALUE pairs separated by ';', \
                     e.g. K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0"
                )));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(r: Result<NetConf, CniError>) -> u32 {
        r.expect_err("expected an error").code.code()
    }

    #[test]
    fn minimal_config_parses_with_default_socket() {
        let c =
            NetConf::parse(br#"{"cniVersion":"1.0.0","name":"twill","type":"twill-cni"}"#).unwrap();
        assert_eq!(c.cni_version, CniVersion::V1_0_0);
        assert_eq!(c.name, "twill");
        assert_eq!(c.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(c.prev_result, None);
    }

    #[test]
    fn socket_and_prev_result_are_read() {
        let c = NetConf::parse(
            br#"{"cniVersion":"0.4.0","name":"k8s-pod-network","type":"twill-cni","socket":"/tmp/t.sock",
                "prevResult":{"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.0.0.5/32"}]},
                "someOtherPluginsKey":[1,2]}"#,
        )
        .unwrap();
        assert_eq!(c.cni_version, CniVersion::V0_4_0);
        assert_eq!(c.socket, PathBuf::from("/tmp/t.sock"));
        assert_eq!(c.prev_result.unwrap().ips[0].address, "10.0.0.5/32");
    }

    #[test]
    fn bad_json_is_code_6() {
        assert_eq!(code(NetConf::parse(b"{\"cniVersion\":")), 6);
        assert_eq!(code(NetConf::parse(b"")), 6);
        assert_eq!(code(NetConf::parse(b"[1,2]")), 6);
    }

    #[test]
    fn unknown_version_is_code_1_and_missing_version_is_code_7() {
        let e =
            NetConf::parse(br#"{"cniVersion":"0.2.0","name":"n","type":"twill-cni"}"#).unwrap_err();
        assert_eq!(e.code.code(), 1);
        assert!(
            e.details.contains("\"0.2.0\"") && e.details.contains("1.0.0"),
            "{e}"
        );
        assert_eq!(
            code(NetConf::parse(
                br#"{"cniVersion":"2.0.0","name":"n","type":"t"}"#
            )),
            1
        );
        let e = NetConf::parse(br#"{"name":"n","type":"twill-cni"}"#).unwrap_err();
        assert_eq!(e.code.code(), 7);
        assert!(e.details.contains("cniVersion"), "{e}");
        assert_eq!(
            code(NetConf::parse(br#"{"cniVersion":1,"name":"n","type":"t"}"#)),
            7
        );
    }

    #[test]
    fn missing_or_bad_required_fields_are_code_7() {
        assert_eq!(
            code(NetConf::parse(br#"{"cniVersion":"1.0.0","type":"t"}"#)),
            7
        );
        assert_eq!(
            code(NetConf::parse(
                br#"{"cniVersion":"1.0.0","name":"-bad","type":"t"}"#
            )),
            7
        );
        assert_eq!(
            code(NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n"}"#)),
            7
        );
        assert_eq!(
            code(NetConf::parse(
                br#"{"cniVersion":"1.0.0","name":"n","type":"t","socket":"rel"}"#
            )),
            7
        );
        assert_eq!(
            code(NetConf::parse(
                br#"{"cniVersion":"1.0.0","name":"n","type":"t","prevResult":3}"#
            )),
            7
        );
    }

    #[test]
    fn ipam_is_code_2_naming_key_and_value() {
        let e = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","type":"t","ipam":{"type":"host-local"}}"#,
        )
        .unwrap_err();
        assert_eq!(e.code.code(), 2);
        assert!(
            e.details.contains("\"ipam\"") && e.details.contains("host-local"),
            "{e}"
        );
    }

    #[test]
    fn cni_args_parse() {
        let a = parse_cni_args("IgnoreUnknown=1;K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns-1;K8S_POD_INFRA_CONTAINER_ID=abc;X=a=b")
            .unwrap();
        assert_eq!(a["K8S_POD_NAMESPACE"], "kube-system");
        assert_eq!(a["K8S_POD_NAME"], "coredns-1");
        assert_eq!(a["X"], "a=b");
        assert!(parse_cni_args("").unwrap().is_empty());
        assert!(parse_cni_args("A=1;;B=2;").unwrap().len() == 2);
        assert_eq!(parse_cni_args("A=1;oops").unwrap_err().code.code(), 4);
        assert_eq!(parse_cni_args("=v").unwrap_err().code.code(), 4);
    }

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn attachment_defaults_namespace_and_pod() {
        let a = Attachment::from_env(
            Command::Add,
            env_of(&[
                ("CNI_CONTAINERID", "c0ffee"),
                ("CNI_NETNS", "/run/netns/p"),
                ("CNI_IFNAME", "eth0"),
            ]),
        )
        .unwrap();
        assert_eq!(
            (a.pod_namespace.as_str(), a.pod_name.as_str()),
            ("default", "c0ffee")
        );
        let a = Attachment::from_env(
            Command::Add,
            env_of(&[
                ("CNI_CONTAINERID", "c0ffee"),
                ("CNI_NETNS", "/run/netns/p"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_ARGS", "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-7"),
            ]),
        )
        .unwrap();
        assert_eq!(
            (a.pod_namespace.as_str(), a.pod_name.as_str()),
            ("shop", "cart-7")
        );
    }

    #[test]
    fn attachment_env_errors_are_code_4_and_name_the_variable() {
        let cases: [(&'static [(&'static str, &'static str)], &str); 5] = [
            (
                &[("CNI_NETNS", "/n"), ("CNI_IFNAME", "eth0")],
                "CNI_CONTAINERID",
            ),
            (
                &[
                    ("CNI_CONTAINERID", "-x"),
                    ("CNI_NETNS", "/n"),
                    ("CNI_IFNAME", "eth0"),
                ],
                "CNI_CONTAINERID",
            ),
            (
                &[
                    ("CNI_CONTAINERID", "c"),
                    ("CNI_NETNS", "/n"),
                    ("CNI_IFNAME", "averyveryverylong0"),
                ],
                "CNI_IFNAME",
            ),
            (
                &[("CNI_CONTAINERID", "c"), ("CNI_IFNAME", "eth0")],
                "CNI_NETNS",
            ),
            (
                &[
                    ("CNI_CONTAINERID", "c"),
                    ("CNI_NETNS", "/n"),
                    ("CNI_IFNAME", "eth0"),
                    ("CNI_ARGS", "junk"),
                ],
                "CNI_ARGS",
            ),
        ];
        for (env, var) in cases {
            let e = Attachment::from_env(Command::Add, env_of(env)).unwrap_err();
            assert_eq!(e.code.code(), 4, "{e}");
            assert!(e.details.contains(var), "{e}");
        }
        // DEL does not need CNI_NETNS.
        let a = Attachment::from_env(
            Command::Del,
            env_of(&[("CNI_CONTAINERID", "c"), ("CNI_IFNAME", "eth0")]),
        )
        .unwrap();
        assert_eq!(a.netns, None);
    }

    #[test]
    fn command_parse() {
        assert_eq!(
            Command::from_env(Some("VERSION")).unwrap(),
            Command::Version
        );
        assert_eq!(Command::from_env(Some("GC")).unwrap_err().code.code(), 4);
        assert_eq!(Command::from_env(None).unwrap_err().code.code(), 4);
    }
}
