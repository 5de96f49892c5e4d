//! IPv4 longest-prefix-match route table.
//!
//! A first, simple structure: one hash map per prefix length and a bitmap of the lengths in
//! use, searched from the longest. Lookups cost one hash probe per populated length (a pod
//! network has two or three: /32 endpoints, /24 node subnets, /16 the cluster), inserts and
//! deletes are O(1). A compressed structure for full BGP tables replaces it in the fast-path
//! work.

use std::{collections::HashMap, net::Ipv4Addr};

use policy_engine::fxhash::FxBuildHasher;

/// An IPv4 prefix; the address is kept masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Prefix {
    addr: u32,
    len: u8,
}

impl Ipv4Prefix {
    /// A prefix of `len` bits (at most 32) of `addr`; host bits are cleared.
    pub fn new(addr: Ipv4Addr, len: u8) -> Option<Self> {
        (len <= 32).then(|| Ipv4Prefix { addr: u32::from(addr) & mask(len), len })
    }

    pub fn addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.addr)
    }

    /// The prefix length in bits.
    #[expect(clippy::len_without_is_empty, reason = "a prefix length, not a container size")]
    pub fn len(&self) -> u8 {
        self.len
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.len) == self.addr
    }
}

impl std::fmt::Display for Ipv4Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr(), self.len)
    }
}

impl std::str::FromStr for Ipv4Prefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not an IPv4 CIDR (expected a.b.c.d/len with len 0..=32)");
        let (a, l) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
        let len: u8 = l.parse().map_err(|_| bad())?;
        Ipv4Prefix::new(addr, len).ok_or_else(bad)
    }
}

const fn mask(len: u8) -> u32 {
    if len == 0 { 0 } else { u32::MAX << (32 - len as u32) }
}

/// Longest-prefix-match table from IPv4 prefixes to `V`.
#[derive(Debug, Clone)]
pub struct RouteTable<V> {
    by_len: Vec<HashMap<u32, V, FxBuildHasher>>,
    /// Bit `len` set when `by_len[len]` is not empty.
    lengths: u64,
}

impl<V> Default for RouteTable<V> {
    fn default() -> Self {
        RouteTable { by_len: (0..=32).map(|_| HashMap::default()).collect(), lengths: 0 }
    }
}

impl<V> RouteTable<V> {
    pub fn insert(&mut self, prefix: Ipv4Prefix, value: V) -> Option<V> {
        self.lengths |= 1 << prefix.len;
        self.by_len[prefix.len as usize].insert(prefix.addr, value)
    }

    pub fn remove(&mut self, prefix: Ipv4Prefix) -> Option<V> {
        let map = &mut self.by_len[prefix.len as usize];
        let old = map.remove(&prefix.addr);
        if map.is_empty() {
            self.lengths &= !(1 << prefix.len);
        }
        old
    }

    /// The value of the longest prefix that contains `ip`.
    #[inline]
    pub fn lookup(&self, ip: Ipv4Addr) -> Option<&V> {
        let ip = u32::from(ip);
        let mut lengths = self.lengths;
        while lengths != 0 {
            let len = 63 - lengths.leading_zeros() as u8;
            if let Some(v) = self.by_len[len as usize].get(&(ip & mask(len))) {
                return Some(v);
            }
            lengths &= !(1 << len);
        }
        None
    }

    pub fn len(&self) -> usize {
        self.by_len.iter().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.lengths == 0
    }

    /// Every route, longest prefixes first.
    pub fn iter(&self) -> impl Iterator<Item = (Ipv4Prefix, &V)> {
        self.by_len.iter().enumerate().rev().flat_map(|(len, m)| {
            m.iter().map(move |(addr, v)| (Ipv4Prefix { addr: *addr, len: len as u8 }, v))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Ipv4Prefix {
        s.parse().unwrap()
    }

    #[test]
    fn longest_prefix_wins() {
        let mut t = RouteTable::default();
        t.insert(p("0.0.0.0/0"), "default");
        t.insert(p("10.244.0.0/16"), "cluster");
        t.insert(p("10.244.2.0/24"), "node2");
        t.insert(p("10.244.2.7/32"), "pod");
        assert_eq!(t.lookup("10.244.2.7".parse().unwrap()), Some(&"pod"));
        assert_eq!(t.lookup("10.244.2.8".parse().unwrap()), Some(&"node2"));
        assert_eq!(t.lookup("10.244.3.1".parse().unwrap()), Some(&"cluster"));
        assert_eq!(t.lookup("8.8.8.8".parse().unwrap()), Some(&"default"));
        t.remove(p("0.0.0.0/0"));
        assert_eq!(t.lookup("8.8.8.8".parse().unwrap()), None);
        t.remove(p("10.244.2.0/24"));
        assert_eq!(t.lookup("10.244.2.8".parse().unwrap()), Some(&"cluster"));
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn prefixes_are_masked_and_validated() {
        assert_eq!(p("10.244.1.77/24").to_string(), "10.244.1.0/24");
        assert!("10.0.0.0/33".parse::<Ipv4Prefix>().unwrap_err().contains("len 0..=32"));
        assert!("10.0.0/8".parse::<Ipv4Prefix>().is_err());
        assert!(p("10.244.1.0/24").contains("10.244.1.255".parse().unwrap()));
        assert!(!p("10.244.1.0/24").contains("10.244.2.0".parse().unwrap()));
    }

    #[test]
    fn matches_a_linear_scan() {
        // Deterministic pseudo-random prefixes and probes.
        let mut x: u64 = 0x9e3779b97f4a7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut t = RouteTable::default();
        let mut all = Vec::new();
        for i in 0..2000u32 {
            let r = next();
            let len = (r % 33) as u8;
            let pre = Ipv4Prefix::new(Ipv4Addr::from((r >> 32) as u32), len).unwrap();
            t.insert(pre, i);
            all.retain(|(q, _)| *q != pre);
            all.push((pre, i));
        }
        for _ in 0..20000 {
            let ip = Ipv4Addr::from(next() as u32);
            let want = all.iter().filter(|(q, _)| q.contains(ip)).max_by_key(|(q, _)| q.len()).map(|(_, v)| v);
            assert_eq!(t.lookup(ip), want, "{ip}");
        }
    }
}
