//! twill's criterion benchmarks live in `benches/`; each group names its cases
//! `group/impl/size` and runs a peer implementation beside twill's. The library holds
//! harnesses a bench and a CI test share: [`hitless`] (route and policy changes under load).

pub mod hitless;
