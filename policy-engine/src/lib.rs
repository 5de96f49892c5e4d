//! twill's network policy: the model (Kubernetes `networking.k8s.io/v1` NetworkPolicy and
//! Calico-style `projectcalico.org/v3` NetworkPolicy / GlobalNetworkPolicy), the selector
//! language, a slow reference evaluator used by tests and explanations, and the packet
//! classifier that compiled policy runs on, for IPv4 and IPv6. It knows nothing of packets
//! beyond the 5-tuple.

#![forbid(unsafe_code)]

pub mod calico;
pub mod classbench;
pub mod classifier;
pub mod compiler;
pub mod dataset;
pub mod fxhash;
pub mod k8s;
pub mod model;
pub mod reference;
pub mod selector;
pub mod world;
