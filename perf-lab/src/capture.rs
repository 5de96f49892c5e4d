//! Packet captures on the lab's wires with tshark, for tests that check what twill puts on
//! the wire (encapsulation, VNI, ports) rather than only whether pods reach each other.
//!
//! A [`Capture`] runs `tshark` inside a namespace with a capture filter and a list of
//! fields, starts returning once tshark says it is capturing, and yields one row of field
//! values per packet when finished. The tshark process is killed if the capture is dropped.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};

use crate::netns;

/// A running tshark.
#[derive(Debug)]
pub struct Capture {
    child: Option<Child>,
    fields: usize,
}

impl Capture {
    /// Captures on `iface` in namespace `ns` packets matching the BPF `filter`, decoding
    /// them with the extra `decode_as` rules (tshark `-d`, e.g. `udp.port==4789,vxlan`),
    /// for at most `max` packets or `duration`, and reports `fields` (tshark `-e` names).
    pub fn start(ns: &str, iface: &str, filter: &str, decode_as: &[&str], fields: &[&str], max: u32, duration: Duration) -> Result<Capture> {
        let mut args: Vec<String> = vec!["netns".into(), "exec".into(), ns.into(), "tshark".into(), "-l".into(), "-n".into()];
        args.extend(["-i".into(), iface.into(), "-f".into(), filter.into()]);
        args.extend(["-c".into(), max.to_string(), "-a".into(), format!("duration:{}", duration.as_secs().max(1))]);
        for d in decode_as {
            args.extend(["-d".into(), (*d).into()]);
        }
        // So that `udp.checksum.status` says good (1) or bad (0); Wireshark dissects the
        // payload either way. A Linux sender's checksums seen on a veth or bridge are
        // partial (offloaded): only a frame twill sent has a final one.
        args.extend(["-o".into(), "udp.check_checksum:TRUE".into()]);
        // The first occurrence of each field: the outer header of a tunnelled packet.
        args.extend(["-T".into(), "fields".into(), "-E".into(), "separator=/t".into(), "-E".into(), "occurrence=f".into()]);
        for f in fields {
            args.extend(["-e".into(), (*f).into()]);
        }
        let mut child = Command::new("ip")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting tshark (apt-get install tshark)")?;
        let stderr = child.stderr.take().context("tshark stderr")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let ready = line.contains("Capturing on");
                let _ = tx.send((ready, line));
            }
        });
        let mut said = Vec::new();
        loop {
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok((true, _)) => break,
                Ok((false, line)) => said.push(line),
                Err(_) => {
                    let _ = child.kill();
                    bail!("tshark in {ns} on {iface} did not start capturing: {}", said.join(" / "));
                }
            }
        }
        // Give the kernel's capture socket a moment past tshark's own announcement.
        std::thread::sleep(Duration::from_millis(200));
        netns::exists(ns).then_some(()).ok_or_else(|| anyhow!("namespace {ns} is gone"))?;
        Ok(Capture { child: Some(child), fields: fields.len() })
    }

    /// Stops tshark (or finds it ended at its packet count or duration) and returns one row
    /// of field values per captured packet.
    pub fn finish(mut self) -> Result<Vec<Vec<String>>> {
        let child = self.child.take().expect("a running capture");
        // `ip netns exec` execs tshark: the child is tshark, which flushes and exits on SIGINT.
        std::thread::sleep(Duration::from_millis(300));
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGINT);
        let out = child.wait_with_output().context("waiting for tshark")?;
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text
            .lines()
            .map(|l| {
                let mut row: Vec<String> = l.split('\t').map(str::to_owned).collect();
                row.resize(self.fields, String::new());
                row
            })
            .collect())
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
