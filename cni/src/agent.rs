//! Client of the agent's local API (docs/agent-api.md): one JSON object plus `\n`
//! per connection, one JSON answer plus `\n` back, every answer carrying `"ok"`.
//! This module owns the requests twill-cni makes (`allocate`, `attach`, `release`,
//! and `stats` as CHECK's liveness probe) and nothing about what they mean.

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use encap::ethernet::EthernetAddress;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How long one request may take end to end before the plugin gives up; the agent
/// answers from memory or its state directory, so this only bounds a hung agent.
const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The agent's socket could not be connected (no agent, or not yet started).
    #[error("cannot connect to the twill agent at {socket}: {source}")]
    Unreachable {
        socket: PathBuf,
        source: std::io::Error,
    },
    /// The connection broke or timed out mid-request.
    #[error("`{op}` request to the twill agent at {socket} failed: {source}")]
    Io {
        op: &'static str,
        socket: PathBuf,
        source: std::io::Error,
    },
    /// The agent answered something that is not this protocol.
    #[error("the twill agent at {socket} answered `{op}` with something unexpected: {reason}")]
    Protocol {
        op: &'static str,
        socket: PathBuf,
        reason: String,
    },
    /// The agent answered `"ok": false`.
    #[error("the twill agent refused `{op}`: {message}")]
    Refused { op: &'static str, message: String },
}

/// A request, serialized with its `op` tag.
#[derive(Debug, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Request<'a> {
    Allocate {
        container_id: &'a str,
        namespace: &'a str,
        pod: &'a str,
        ifname: &'a str,
    },
    Attach {
        container_id: &'a str,
        host_ifname: &'a str,
        pod_mac: &'a str,
    },
    Release {
        container_id: &'a str,
    },
    Stats,
}

impl Request<'_> {
    fn op(&self) -> &'static str {
        match self {
            Request::Allocate { .. } => "allocate",
            Request::Attach { .. } => "attach",
            Request::Release { .. } => "release",
            Request::Stats => "stats",
        }
    }
}

/// The answer to `allocate`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Allocation {
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub mtu: u32,
    #[serde(deserialize_with = "mac")]
    pub gateway_mac: EthernetAddress,
    /// The pod's IPv6 address and gateway, when the node is dual-stack.
    #[serde(default)]
    pub ip6: Option<std::net::Ipv6Addr>,
    #[serde(default)]
    pub gateway6: Option<std::net::Ipv6Addr>,
}

/// `gateway_mac` as `aa:bb:cc:dd:ee:ff`.
fn mac<'de, D: serde::Deserializer<'de>>(d: D) -> Result<EthernetAddress, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(|_| serde::de::Error::custom(format!("gateway_mac {s:?} (expected aa:bb:cc:dd:ee:ff)")))
}

impl Allocation {
    /// The IPv6 address and gateway of a dual-stack pod.
    pub fn dual_stack(&self) -> Option<(std::net::Ipv6Addr, std::net::Ipv6Addr)> {
        Some((self.ip6?, self.gateway6?))
    }
}

#[derive(Debug, Deserialize)]
struct Released {
    released: bool,
}

#[derive(Debug, Deserialize)]
struct Nothing {}

/// The agent at one socket path.
#[derive(Debug, Clone)]
pub struct AgentClient {
    socket: PathBuf,
}

impl AgentClient {
    pub fn new(socket: &Path) -> Self {
        AgentClient {
            socket: socket.to_owned(),
        }
    }

    pub fn allocate(
        &self,
        container_id: &str,
        namespace: &str,
        pod: &str,
        ifname: &str,
    ) -> Result<Allocation, AgentError> {
        let req = Request::Allocate {
            container_id,
            namespace,
            pod,
            ifname,
        };
        let answer = self.call::<Allocation>(&req).and_then(|a| self.checked(a));
        if let Err(AgentError::Protocol { .. }) = &answer {
            // The agent may hold an address for an answer the plugin cannot use: give it back.
            let _ = self.release(container_id);
        }
        answer
    }

    /// `a`, unless it is malformed.
    fn checked(&self, a: Allocation) -> Result<Allocation, AgentError> {
        let bad = |reason: String| AgentError::Protocol {
            op: "allocate",
            socket: self.socket.clone(),
            reason,
        };
        if a.prefix_len != 32 {
            return Err(bad(format!(
                "prefix_len {} (pod addresses are /32)",
                a.prefix_len
            )));
        }
        if !(68..=65_535).contains(&a.mtu) {
            return Err(bad(format!("mtu {} (expected 68..=65535)", a.mtu)));
        }
        Ok(a)
    }

    pub fn attach(
        &self,
        container_id: &str,
        host_ifname: &str,
        pod_mac: &str,
    ) -> Result<(), AgentError> {
        self.call::<Nothing>(&Request::Attach {
            container_id,
            host_ifname,
            pod_mac,
        })
        .map(|_| ())
    }

    /// Returns whether the agent held anything for `container_id`.
    pub fn release(&self, container_id: &str) -> Result<bool, AgentError> {
        self.call::<Released>(&Request::Release { container_id })
            .map(|r| r.released)
    }

    /// A cheap round trip proving the agent is up (CHECK's "daemon required for
    /// connectivity" test).
    pub fn ping(&self) -> Result<(), AgentError> {
        self.call::<Value>(&Request::Stats).map(|_| ())
    }

    fn call<T: DeserializeOwned>(&self, req: &Request<'_>) -> Result<T, AgentError> {
        let op = req.op();
        let stream =
            UnixStream::connect(&self.socket).map_err(|source| AgentError::Unreachable {
                socket: self.socket.clone(),
                source,
            })?;
        let io = |source| AgentError::Io {
            op,
            socket: self.socket.clone(),
            source,
        };
        stream.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
        stream.set_write_timeout(Some(TIMEOUT)).map_err(io)?;

        let mut line = serde_json::to_vec(req).expect("requests always serialize");
        line.push(b'\n');
        (&stream).write_all(&line).map_err(io)?;

        let mut answer = String::new();
        BufReader::new(&stream).read_line(&mut answer).map_err(io)?;
        tracing::debug!(op, answer = answer.trim_end(), "agent answered");
        let proto = |reason: String| AgentError::Protocol {
            op,
            socket: self.socket.clone(),
            reason,
        };
        if answer.is_empty() {
            return Err(proto("the connection closed without an answer".into()));
        }
        let value: Value =
            serde_json::from_str(&answer).map_err(|e| proto(format!("not JSON ({e})")))?;
        match value.get("ok") {
            Some(Value::Bool(true)) => {}
            Some(Value::Bool(false)) => {
                let message = value
                    .get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("(no \"error\" given)");
                return Err(AgentError::Refused {
                    op,
                    message: message.to_owned(),
                });
            }
            _ => return Err(proto("no boolean \"ok\" field".into())),
        }
        serde_json::from_value(value).map_err(|e| proto(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn requests_serialize_as_the_doc_says() {
        let r = Request::Allocate {
            container_id: "c1",
            namespace: "default",
            pod: "p",
            ifname: "eth0",
        };
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"op": "allocate", "container_id": "c1", "namespace": "default", "pod": "p", "ifname": "eth0"})
        );
        let r = Request::Attach {
            container_id: "c1",
            host_ifname: "tw0123456789a",
            pod_mac: "aa:bb:cc:dd:ee:ff",
        };
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"op": "attach", "container_id": "c1", "host_ifname": "tw0123456789a", "pod_mac": "aa:bb:cc:dd:ee:ff"})
        );
        assert_eq!(
            serde_json::to_value(Request::Release { container_id: "c1" }).unwrap(),
            json!({"op": "release", "container_id": "c1"})
        );
        assert_eq!(
            serde_json::to_value(Request::Stats).unwrap(),
            json!({"op": "stats"})
        );
    }

    #[test]
    fn an_allocation_has_a_well_formed_gateway_mac() {
        let answer = |mac: &str| json!({"ip": "10.244.1.2", "prefix_len": 32, "gateway": "169.254.1.1", "mtu": 1450, "gateway_mac": mac});
        let a: Allocation = serde_json::from_value(answer("aa:0B:cc:dd:ee:0f")).unwrap();
        assert_eq!(a.gateway_mac, EthernetAddress([0xaa, 0x0b, 0xcc, 0xdd, 0xee, 0x0f]));
        for bad in ["", "aa:bb:cc:dd:ee", "aa:bb:cc:dd:ee:ff:00", "aa:bb:cc:dd:ee:f", "aa:bb:cc:dd:ee:gg", "aabb:cc:dd:ee:ff"] {
            let e = serde_json::from_value::<Allocation>(answer(bad)).unwrap_err().to_string();
            assert!(e.contains(&format!("gateway_mac {bad:?}")), "{bad:?}: {e}");
        }
    }

    #[test]
    fn missing_socket_is_unreachable() {
        let c = AgentClient::new(Path::new("/nonexistent/twill-cni-test.sock"));
        assert!(matches!(
            c.release("x"),
            Err(AgentError::Unreachable { .. })
        ));
    }
}
