//! twill's criterion benchmarks live in `benches/`; each group names its cases
//! `group/impl/size` and runs a peer implementation beside twill's.
