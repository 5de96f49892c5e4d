//! Builds the XDP hook (bpf/twill_xdp.c) with clang into an eBPF object that
//! `xdp_hook.rs` embeds. A missing clang or missing headers is a build error that says
//! which package to install.

use std::{env, path::PathBuf, process::Command};

fn main() {
    let src = "bpf/twill_xdp.c";
    println!("cargo:rerun-if-changed={src}");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("twill_xdp.o");
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_string());
    let arch_include = format!("-I/usr/include/{}-linux-gnu", env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default());
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror", &arch_include, "-c", src, "-o"])
        .arg(&out)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!(
            "{clang} failed ({s}) to build {src}: install clang, libbpf-dev and linux-libc-dev \
             (apt-get install clang libbpf-dev linux-libc-dev)"
        ),
        Err(e) => panic!("cannot run {clang} to build {src}: {e}; install clang (apt-get install clang)"),
    }
}
