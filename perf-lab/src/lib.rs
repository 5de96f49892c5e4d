//! `twill-lab`: builds Kubernetes-like clusters out of network namespaces and veth links,
//! wires pods with either twill (`twill agent` + `twill-cni`) or the kernel path Flannel's
//! vxlan backend sets up, and runs traffic between the pods.
//!
//! The lab owns every namespace and link whose name starts with `tw-` and the directory
//! [`topology::LAB_DIR`]. A [`topology::Lab`] is a guard: dropping it (also while a test
//! panics) tears the whole lab down, unless it was [`detach`](topology::Lab::detach)ed.
//!
//! Building a mixed cluster from code:
//!
//! ```no_run
//! use perf_lab::topology::{Dataplane, Topology};
//! # fn main() -> anyhow::Result<()> {
//! let mut lab = Topology::new()
//!     .node(Dataplane::Twill, 2)
//!     .node(Dataplane::Twill, 2)
//!     .node(Dataplane::KernelFlannel, 2)
//!     .up()?;
//! let report = perf_lab::probe::check_all_pairs(lab.pods())?;
//! assert!(report.iter().all(|p| p.ok()));
//! lab.add_node(Dataplane::Twill, 1)?;
//! lab.down()?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod bench;
pub mod cni_runtime;
pub mod capture;
pub mod generator;
pub mod kernel_calico;
pub mod kernel_flannel;
pub mod manifests;
pub mod netns;
pub mod probe;
pub mod plot;
pub mod process;
pub mod report;
pub mod rules;
pub mod teardown;
pub mod topology;
pub mod traffic;
pub mod twill_node;
