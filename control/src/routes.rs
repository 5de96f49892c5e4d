//! `twill agent --routes FILE`: networks outside the cluster that pods reach through the
//! uplink's default gateway — what a BGP speaker beside the node would have learned, up to
//! a full Internet table. Read once at start into a table the per-version route calculation
//! starts from (`calc::snapshot` clones it: a pointer per part, see `forwarder::route`).
//!
//! The file: one IPv4 CIDR per line (`198.51.100.0/24`); blank lines and `#` comments are
//! ignored; a `.gz` name is gunzipped. Pods send to these networks with their own
//! addresses (the network beyond routes the pools back), or with the node's when their pool
//! has natOutgoing; a pod subnet inside one of them is still routed to its node.

use std::path::Path;

use forwarder::{RouteTarget, route::Ipv4Prefix, route::RouteTable};

/// Reads `path` into a table of [`RouteTarget::Outside`] routes.
pub fn read(path: &Path) -> Result<RouteTable<RouteTarget>, String> {
    let text = policy_engine::dataset::read_text(path).map_err(|e| format!("--routes {e}"))?;
    parse(&text).map_err(|e| format!("--routes {}: {e}", path.display()))
}

/// The routes of `text` (the format of [`read`]); an error names the first bad line.
pub fn parse(text: &str) -> Result<RouteTable<RouteTarget>, String> {
    let mut table = RouteTable::default();
    for (n, line) in policy_engine::dataset::content_lines(text) {
        if line.contains(':') {
            return Err(format!("line {n}: {line:?} is an IPv6 prefix; twill routes IPv4 only (accepted: a.b.c.d/len)"));
        }
        let prefix: Ipv4Prefix = line.parse().map_err(|e| format!("line {n}: {e}"))?;
        table.insert(prefix, RouteTarget::Outside);
    }
    Ok(table.compacted())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn reads_prefixes_without_comments_and_names_a_bad_line() {
        let t = parse("# upstream\n198.51.100.0/24\n\n  203.0.113.0/25 # half\n0.0.0.0/0\n").unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t.lookup(Ipv4Addr::new(203, 0, 113, 200)), Some(RouteTarget::Outside), "under the default");
        assert_eq!(parse("198.51.100.0/24\n10.1.2.3/33\n").unwrap_err(), "line 2: \"10.1.2.3/33\" is not an IPv4 CIDR (expected a.b.c.d/len with len 0..=32)");
        assert!(parse("2001:db8::/32\n").unwrap_err().starts_with("line 1: \"2001:db8::/32\" is an IPv6 prefix"));
    }

    #[test]
    fn loads_the_full_bgp_table() {
        let text = policy_engine::dataset::read("bgp/prefixes.txt.gz").expect("the BGP table of shared/data");
        let v4: String = text.lines().filter(|l| !l.contains(':')).flat_map(|l| [l, "\n"]).collect();
        let t = parse(&v4).unwrap();
        assert_eq!(t.len(), 901_899);
        assert_eq!(t.lookup(Ipv4Addr::new(8, 8, 8, 8)), Some(RouteTarget::Outside));
    }
}
