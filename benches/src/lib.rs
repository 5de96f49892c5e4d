//! twill's criterion benchmarks live in `benches/`; each group names its cases
//! `group/impl/size` and runs a peer implementation beside twill's. The library holds
//! what several benches and a CI test share: [`fixture`] (the node, its pod and its frames)
//! and [`hitless`] (route and policy changes under load).

pub mod fixture;
pub mod hitless;
