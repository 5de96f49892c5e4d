//! twill's criterion benchmarks live in `benches/`; each group names its cases
//! `group/impl/size` and runs a peer implementation beside twill's. The library holds
//! what several benches and a CI test share: [`fixture`] (the node, its pod and its frames),
//! [`classbench_policy`] (ClassBench rule sets as Calico policy, in either family) and
//! [`hitless`] (route and policy changes under load).

pub mod classbench_policy;
pub mod fixture;
pub mod hitless;
