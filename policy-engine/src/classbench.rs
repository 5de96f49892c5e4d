//! Parsers for ClassBench rule sets and header traces (Taylor & Turner, "ClassBench: A
//! Packet Classification Benchmark", INFOCOM 2005), the field's standard benchmark input.
//!
//! Reads text; hands on [`ClassRule`]s (first line = highest priority) and [`TraceEntry`]s.
//! Decompressing the `.gz` files is the caller's job. Errors name the 1-based line, the
//! field and what would have been accepted.
//!
//! Rule line: `@SRC/LEN<TAB>DST/LEN<TAB>SPORT_LO : SPORT_HI<TAB>DPORT_LO : DPORT_HI<TAB>
//! PROTO/MASK<TAB>FLAGS/MASK`. A protocol mask of `0x00` matches any protocol, `0xFF` one
//! protocol; any other mask is expanded to the protocols it matches. The TCP-flags column
//! is ignored.
//!
//! Trace line: `SRC DST SPORT DPORT PROTO FLAGS RULE`, addresses as unsigned decimal
//! integers, `RULE` the 0-based index of the rule the header was generated from.

use crate::classifier::{ClassRule, Key};

/// A malformed line of a rule or trace file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, {field}: {problem} in {text:?}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// The field that failed, e.g. `"source prefix"`.
    pub field: &'static str,
    /// What was wrong and what would be accepted.
    pub problem: String,
    /// The offending text.
    pub text: String,
}

/// One header of a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceEntry {
    /// The header.
    pub key: Key,
    /// Index of the rule it was generated from (the first match may come earlier).
    pub rule: u32,
}

fn err(line: usize, field: &'static str, problem: impl Into<String>, text: &str) -> ParseError {
    ParseError {
        line,
        field,
        problem: problem.into(),
        text: text.to_owned(),
    }
}

fn num<T: std::str::FromStr>(line: usize, field: &'static str, s: &str) -> Result<T, ParseError> {
    s.trim().parse().map_err(|_| {
        err(
            line,
            field,
            format!("not an integer in 0..={}", std::any::type_name::<T>()),
            s,
        )
    })
}

fn hex_u8(line: usize, field: &'static str, s: &str) -> Result<u8, ParseError> {
    let t = s.trim();
    let digits = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    u8::from_str_radix(digits, 16).map_err(|_| {
        err(
            line,
            field,
            "not a hexadecimal byte (accepted: 0x00..0xFF)",
            s,
        )
    })
}

fn prefix(line: usize, field: &'static str, s: &str) -> Result<(u32, u8), ParseError> {
    let (addr, len) = s
        .split_once('/')
        .ok_or_else(|| err(line, field, "expected A.B.C.D/LEN", s))?;
    let addr: std::net::Ipv4Addr = addr
        .trim()
        .parse()
        .map_err(|_| err(line, field, "not a dotted IPv4 address", s))?;
    let len: u8 = num(line, field, len)?;
    if len > 32 {
        return Err(err(
            line,
            field,
            "prefix length over 32 (accepted: 0..=32)",
            s,
        ));
    }
    Ok((u32::from(addr), len))
}

fn ports(line: usize, field: &'static str, s: &str) -> Result<(u16, u16), ParseError> {
    let (lo, hi) = s
        .split_once(':')
        .ok_or_else(|| err(line, field, "expected LO : HI", s))?;
    let (lo, hi): (u16, u16) = (num(line, field, lo)?, num(line, field, hi)?);
    if lo > hi {
        return Err(err(
            line,
            field,
            "range ends before it starts (accepted: LO <= HI)",
            s,
        ));
    }
    Ok((lo, hi))
}

/// Parses one rule line (`line` is its 1-based number, for errors).
pub fn parse_rule(line: usize, text: &str) -> Result<ClassRule, ParseError> {
    let body = text
        .trim()
        .strip_prefix('@')
        .ok_or_else(|| err(line, "rule", "a rule line starts with '@'", text))?;
    let fields: Vec<&str> = body
        .split('\t')
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .collect();
    if fields.len() < 5 {
        return Err(err(
            line,
            "rule",
            format!(
                "{} tab-separated fields, expected 6 (SRC DST SPORT DPORT PROTO FLAGS)",
                fields.len()
            ),
            text,
        ));
    }
    let src = prefix(line, "source prefix", fields[0])?;
    let dst = prefix(line, "destination prefix", fields[1])?;
    let sport = ports(line, "source ports", fields[2])?;
    let dport = ports(line, "destination ports", fields[3])?;
    let (proto, mask) = fields[4]
        .split_once('/')
        .ok_or_else(|| err(line, "protocol", "expected 0xPP/0xMM", fields[4]))?;
    let (proto, mask) = (
        hex_u8(line, "protocol", proto)?,
        hex_u8(line, "protocol mask", mask)?,
    );
    let protocols = match mask {
        0 => Vec::new(),
        0xff => vec![proto],
        m => (0..=255u8).filter(|p| p & m == proto & m).collect(),
    };
    let any_addr = |p: (u32, u8)| if p.1 == 0 { Vec::new() } else { vec![p] };
    let any_port = |p: (u16, u16)| {
        if p == (0, u16::MAX) {
            Vec::new()
        } else {
            vec![p]
        }
    };
    Ok(ClassRule {
        src: any_addr(src),
        dst: any_addr(dst),
        src_ports: any_port(sport),
        dst_ports: any_port(dport),
        protocols,
        ..ClassRule::default()
    })
}

/// Parses a rule file; blank lines are skipped.
pub fn parse_rules(text: &str) -> Result<Vec<ClassRule>, ParseError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| parse_rule(i + 1, l))
        .collect()
}

/// Parses one trace line (`line` is its 1-based number, for errors).
pub fn parse_trace_line(line: usize, text: &str) -> Result<TraceEntry, ParseError> {
    let f: Vec<&str> = text.split_whitespace().collect();
    if f.len() < 7 {
        return Err(err(
            line,
            "trace",
            format!(
                "{} fields, expected 7 (SRC DST SPORT DPORT PROTO FLAGS RULE)",
                f.len()
            ),
            text,
        ));
    }
    let key = Key {
        src: num(line, "source address", f[0])?,
        dst: num(line, "destination address", f[1])?,
        src_port: num(line, "source port", f[2])?,
        dst_port: num(line, "destination port", f[3])?,
        proto: num(line, "protocol", f[4])?,
    };
    Ok(TraceEntry {
        key,
        rule: num(line, "rule index", f[6])?,
    })
}

/// Parses a trace file; blank lines are skipped.
pub fn parse_trace(text: &str) -> Result<Vec<TraceEntry>, ParseError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| parse_trace_line(i + 1, l))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_line() {
        let r = parse_rule(
            1,
            "@237.73.3.4/32\t67.236.63.0/24\t0 : 65535\t1711 : 1711\t0x06/0xFF\t0x0000/0x0200\t",
        )
        .unwrap();
        assert_eq!(r.src, vec![(0xed49_0304, 32)]);
        assert_eq!(r.dst, vec![(0x43ec_3f00, 24)]);
        assert!(r.src_ports.is_empty());
        assert_eq!(r.dst_ports, vec![(1711, 1711)]);
        assert_eq!(r.protocols, vec![6]);
        let any = parse_rule(
            2,
            "@0.0.0.0/0\t0.0.0.0/0\t0 : 65535\t0 : 65535\t0x00/0x00\t0x0000/0x0000",
        )
        .unwrap();
        assert_eq!(any, ClassRule::default());
    }

    #[test]
    fn errors_name_line_and_field() {
        let e = parse_rules("@1.2.3.4/32\t1.2.3.4/33\t0 : 1\t0 : 1\t0x06/0xFF\t0/0\n").unwrap_err();
        assert_eq!((e.line, e.field), (1, "destination prefix"));
        let e = parse_rule(7, "@1.2.3.4/32\t1.2.3.4/3\t5 : 1\t0 : 1\t0x06/0xFF\t0/0").unwrap_err();
        assert_eq!((e.line, e.field), (7, "source ports"));
        assert!(e.to_string().starts_with("line 7, source ports"), "{e}");
        let e = parse_trace("1 2 3 4 6 0 0\n1 2 3 70000 6 0 0\n").unwrap_err();
        assert_eq!((e.line, e.field), (2, "destination port"));
    }

    #[test]
    fn trace_line() {
        let t = parse_trace_line(1, "0\t4114795065\t0\t123\t6\t33559040\t238").unwrap();
        assert_eq!(
            t.key,
            Key {
                src: 0,
                dst: 4_114_795_065,
                proto: 6,
                src_port: 0,
                dst_port: 123
            }
        );
        assert_eq!(t.rule, 238);
    }
}
