//! The Calico selector language and its AST, which Kubernetes `LabelSelector`s convert to.
//!
//! Grammar (Calico `projectcalico.org/v3`, "Selectors" in the NetworkPolicy reference):
//!
//! ```text
//! expr    := and ( "||" and )*
//! and     := unary ( "&&" unary )*
//! unary   := "!" unary | "(" expr ")" | "all()" | "global()" | "has(" key ")" | key op
//! op      := "==" str | "!=" str | "in" set | "not" "in" set
//!          | "contains" str | "starts" "with" str | "ends" "with" str
//! set     := "{" [ str ( "," str )* ] "}"
//! str     := '...' | "..."
//! ```
//!
//! An empty (all-blank) string parses to [`Selector::All`], as Calico's `selector` field does.
//! `k != 'v'` and `k not in {...}` also match an object without the label `k` (Calico and
//! Kubernetes agree on this). `global()` selects what is not namespaced: it parses to
//! `!has(projectcalico.org/namespace)`, the label every workload endpoint carries. Errors carry the byte offset of the offending character and
//! print a caret under it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Labels of a namespace or an endpoint.
pub type Labels = BTreeMap<String, String>;

/// A parsed selector: a predicate over a label map.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Selector {
    /// `all()`: every object.
    All,
    /// `has(k)`.
    Has(String),
    /// `k == 'v'`.
    Eq(String, String),
    /// `k != 'v'` (true when `k` is absent).
    NotEq(String, String),
    /// `k in {'a', 'b'}`.
    In(String, BTreeSet<String>),
    /// `k not in {'a', 'b'}` (true when `k` is absent).
    NotIn(String, BTreeSet<String>),
    /// `k contains 's'`.
    Contains(String, String),
    /// `k starts with 's'`.
    StartsWith(String, String),
    /// `k ends with 's'`.
    EndsWith(String, String),
    /// `!e`.
    Not(Box<Selector>),
    /// `a && b && ...` (empty = all).
    And(Vec<Selector>),
    /// `a || b || ...` (empty = nothing).
    Or(Vec<Selector>),
}

/// A selector that does not parse; the message names what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} at byte {offset}:\n  {input}\n  {caret}^", caret = " ".repeat(self.caret_column()))]
pub struct SelectorError {
    /// The selector text.
    pub input: String,
    /// Byte offset of the offending character (== input length at end of input).
    pub offset: usize,
    /// What went wrong and what would be accepted.
    pub message: String,
}

impl SelectorError {
    fn caret_column(&self) -> usize {
        self.input
            .get(..self.offset)
            .map_or(self.offset, |s| s.chars().count())
    }
}

impl Selector {
    /// Parses Calico selector syntax.
    pub fn parse(input: &str) -> Result<Selector, SelectorError> {
        let mut p = Parser { input, pos: 0 };
        p.skip_ws();
        if p.pos == input.len() {
            return Ok(Selector::All);
        }
        let sel = p.expr()?;
        p.skip_ws();
        if p.pos != input.len() {
            return Err(p.err("expected `&&`, `||`, `)` or end of selector"));
        }
        Ok(sel)
    }

    /// Whether the labels satisfy the selector.
    pub fn matches(&self, labels: &Labels) -> bool {
        match self {
            Selector::All => true,
            Selector::Has(k) => labels.contains_key(k),
            Selector::Eq(k, v) => labels.get(k) == Some(v),
            Selector::NotEq(k, v) => labels.get(k) != Some(v),
            Selector::In(k, set) => labels.get(k).is_some_and(|v| set.contains(v)),
            Selector::NotIn(k, set) => !labels.get(k).is_some_and(|v| set.contains(v)),
            Selector::Contains(k, s) => labels.get(k).is_some_and(|v| v.contains(s.as_str())),
            Selector::StartsWith(k, s) => labels.get(k).is_some_and(|v| v.starts_with(s.as_str())),
            Selector::EndsWith(k, s) => labels.get(k).is_some_and(|v| v.ends_with(s.as_str())),
            Selector::Not(e) => !e.matches(labels),
            Selector::And(es) => es.iter().all(|e| e.matches(labels)),
            Selector::Or(es) => es.iter().any(|e| e.matches(labels)),
        }
    }

    /// `a && b`, flattening and dropping `all()`.
    pub fn and(self, other: Selector) -> Selector {
        let mut parts = Vec::new();
        for s in [self, other] {
            match s {
                Selector::All => {}
                Selector::And(v) => parts.extend(v),
                s => parts.push(s),
            }
        }
        match parts.len() {
            0 => Selector::All,
            1 => parts.pop().unwrap_or(Selector::All),
            _ => Selector::And(parts),
        }
    }
}

fn quote(s: &str) -> String {
    if s.contains('\'') {
        format!("\"{s}\"")
    } else {
        format!("'{s}'")
    }
}

fn set_str(set: &BTreeSet<String>) -> String {
    set.iter().map(|s| quote(s)).collect::<Vec<_>>().join(", ")
}

impl fmt::Display for Selector {
    /// Prints Calico syntax that parses back to an equal AST.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::All => f.write_str("all()"),
            Selector::Has(k) => write!(f, "has({k})"),
            Selector::Eq(k, v) => write!(f, "{k} == {}", quote(v)),
            Selector::NotEq(k, v) => write!(f, "{k} != {}", quote(v)),
            Selector::In(k, s) => write!(f, "{k} in {{{}}}", set_str(s)),
            Selector::NotIn(k, s) => write!(f, "{k} not in {{{}}}", set_str(s)),
            Selector::Contains(k, v) => write!(f, "{k} contains {}", quote(v)),
            Selector::StartsWith(k, v) => write!(f, "{k} starts with {}", quote(v)),
            Selector::EndsWith(k, v) => write!(f, "{k} ends with {}", quote(v)),
            Selector::Not(e) => write!(f, "!({e})"),
            Selector::And(es) | Selector::Or(es) => {
                let (sep, empty) = if matches!(self, Selector::And(_)) {
                    (" && ", "all()")
                } else {
                    (" || ", "!all()")
                };
                if es.is_empty() {
                    return f.write_str(empty);
                }
                let parts: Vec<String> = es.iter().map(|e| format!("({e})")).collect();
                f.write_str(&parts.join(sep))
            }
        }
    }
}

struct Parser<'a> {
    input: &'a str,
    pos: usize,
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-')
}

impl Parser<'_> {
    fn err(&self, message: &str) -> SelectorError {
        SelectorError {
            input: self.input.to_string(),
            offset: self.pos,
            message: message.to_string(),
        }
    }

    fn rest(&self) -> &str {
        &self.input[self.pos..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn skip_ws(&mut self) {
        while let Some(c) = self.peek().filter(|c| c.is_whitespace()) {
            self.pos += c.len_utf8();
        }
    }

    fn eat(&mut self, tok: &str) -> bool {
        self.skip_ws();
        if self.rest().starts_with(tok) {
            self.pos += tok.len();
            true
        } else {
            false
        }
    }

    /// Eats a keyword only when it is not the prefix of a longer word.
    fn eat_word(&mut self, word: &str) -> bool {
        self.skip_ws();
        let rest = self.rest();
        if rest.starts_with(word) && !rest[word.len()..].starts_with(is_key_char) {
            self.pos += word.len();
            true
        } else {
            false
        }
    }

    fn expr(&mut self) -> Result<Selector, SelectorError> {
        let mut parts = vec![self.and()?];
        while self.eat("||") {
            parts.push(self.and()?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Selector::Or(parts)
        })
    }

    fn and(&mut self) -> Result<Selector, SelectorError> {
        let mut parts = vec![self.unary()?];
        while self.eat("&&") {
            parts.push(self.unary()?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Selector::And(parts)
        })
    }

    fn unary(&mut self) -> Result<Selector, SelectorError> {
        self.skip_ws();
        if self.rest().starts_with("!") && !self.rest().starts_with("!=") {
            self.pos += 1;
            return Ok(Selector::Not(Box::new(self.unary()?)));
        }
        if self.eat("(") {
            let e = self.expr()?;
            if !self.eat(")") {
                return Err(self.err("expected `)` or an operator (`&&`, `||`)"));
            }
            return Ok(e);
        }
        let save = self.pos;
        if self.eat_word("all") && self.eat("(") {
            if !self.eat(")") {
                return Err(self.err("expected `)` after `all(`"));
            }
            return Ok(Selector::All);
        }
        self.pos = save;
        if self.eat_word("global") && self.eat("(") {
            if !self.eat(")") {
                return Err(self.err("expected `)` after `global(`"));
            }
            // Non-namespaced objects: no workload endpoint, which all carry this label.
            return Ok(Selector::Not(Box::new(Selector::Has(
                crate::world::ENDPOINT_NAMESPACE_LABEL.to_string(),
            ))));
        }
        self.pos = save;
        if self.eat_word("has") && self.eat("(") {
            self.skip_ws();
            let k = self.key()?;
            if !self.eat(")") {
                return Err(self.err("expected `)` after the label key in `has(`"));
            }
            return Ok(Selector::Has(k));
        }
        self.pos = save;
        self.skip_ws();
        let k = self.key()?;
        if self.eat("==") {
            return Ok(Selector::Eq(k, self.string()?));
        }
        if self.eat("!=") {
            return Ok(Selector::NotEq(k, self.string()?));
        }
        if self.eat_word("in") {
            return Ok(Selector::In(k, self.set()?));
        }
        let before_not = self.pos;
        if self.eat_word("not") {
            if self.eat_word("in") {
                return Ok(Selector::NotIn(k, self.set()?));
            }
            self.skip_ws();
            return Err(self.err("expected `in` after `not`"));
        }
        self.pos = before_not;
        if self.eat_word("contains") {
            return Ok(Selector::Contains(k, self.string()?));
        }
        if self.eat_word("starts") {
            if !self.eat_word("with") {
                self.skip_ws();
                return Err(self.err("expected `with` after `starts`"));
            }
            return Ok(Selector::StartsWith(k, self.string()?));
        }
        if self.eat_word("ends") {
            if !self.eat_word("with") {
                self.skip_ws();
                return Err(self.err("expected `with` after `ends`"));
            }
            return Ok(Selector::EndsWith(k, self.string()?));
        }
        self.skip_ws();
        Err(self.err(
            "expected an operator after the label key: `==`, `!=`, `in`, `not in`, `contains`, `starts with` or `ends with`",
        ))
    }

    fn key(&mut self) -> Result<String, SelectorError> {
        let start = self.pos;
        while let Some(c) = self.peek().filter(|c| is_key_char(*c)) {
            self.pos += c.len_utf8();
        }
        if self.pos == start {
            return Err(self.err(
                "expected a label key (letters, digits, `_`, `.`, `/`, `-`), `!`, `(`, `all()` or `has(`",
            ));
        }
        Ok(self.input[start..self.pos].to_string())
    }

    fn string(&mut self) -> Result<String, SelectorError> {
        self.skip_ws();
        let q = match self.peek() {
            Some(q @ ('\'' | '"')) => q,
            _ => return Err(self.err("expected a quoted string ('...' or \"...\")")),
        };
        let open = self.pos;
        self.pos += 1;
        match self.rest().find(q) {
            Some(end) => {
                let s = self.rest()[..end].to_string();
                self.pos += end + 1;
                Ok(s)
            }
            None => {
                self.pos = open;
                Err(self.err("unterminated string"))
            }
        }
    }

    fn set(&mut self) -> Result<BTreeSet<String>, SelectorError> {
        if !self.eat("{") {
            self.skip_ws();
            return Err(self.err("expected `{` to open a set of quoted strings"));
        }
        let mut set = BTreeSet::new();
        if self.eat("}") {
            return Ok(set);
        }
        loop {
            set.insert(self.string()?);
            if self.eat("}") {
                return Ok(set);
            }
            if !self.eat(",") {
                self.skip_ws();
                return Err(self.err("expected `,` or `}` in set"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn match_table() {
        let l = labels(&[("app", "web"), ("tier", "frontend"), ("env", "prod-eu")]);
        let cases: &[(&str, bool)] = &[
            ("", true),
            ("   ", true),
            ("all()", true),
            ("app == 'web'", true),
            ("app == \"db\"", false),
            ("app != 'db'", true),
            ("missing != 'x'", true),
            ("app in {'web', 'api'}", true),
            ("app in {}", false),
            ("app not in {'web'}", false),
            ("missing not in {'web'}", true),
            ("has(app)", true),
            ("!has(app)", false),
            ("has(missing)", false),
            ("! has(missing)", true),
            ("env contains 'od-e'", true),
            ("env starts with 'prod'", true),
            ("env ends with '-eu'", true),
            ("env ends with '-us'", false),
            ("missing contains ''", false),
            ("app == 'web' && tier == 'frontend'", true),
            ("app == 'web' && tier == 'backend'", false),
            ("app == 'db' || tier == 'frontend'", true),
            ("app == 'db' || tier == 'backend' && has(app)", false),
            ("(app == 'db' || tier == 'frontend') && has(env)", true),
            ("!(app == 'web')", false),
            ("!!has(app)", true),
            ("inx == 'a' || all()", true),
            ("k8s.io/name-x_y == 'a'", false),
            ("app=='web'&&!has(x)", true),
            ("global()", true),
            ("global() && has(projectcalico.org/namespace)", false),
        ];
        for (text, want) in cases {
            let sel = Selector::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(sel.matches(&l), *want, "{text:?} parsed as {sel:?}");
            // Display round-trips.
            let back = Selector::parse(&sel.to_string()).unwrap();
            assert_eq!(back.matches(&l), *want, "{text:?} printed as {sel}");
        }
    }

    #[test]
    fn ast_shapes() {
        assert_eq!(
            Selector::parse("a == 'x' || b == 'y' && !has(c)").unwrap(),
            Selector::Or(vec![
                Selector::Eq("a".into(), "x".into()),
                Selector::And(vec![
                    Selector::Eq("b".into(), "y".into()),
                    Selector::Not(Box::new(Selector::Has("c".into()))),
                ]),
            ])
        );
        assert_eq!(
            Selector::parse("k not in {\"a\", 'b'}").unwrap(),
            Selector::NotIn("k".into(), ["a".to_string(), "b".to_string()].into())
        );
    }

    #[test]
    fn error_positions() {
        let cases: &[(&str, usize)] = &[
            ("app ==", 6),
            ("app == web", 7),
            ("app = 'web'", 4),
            ("app == 'web", 7),
            ("(app == 'web'", 13),
            ("app == 'web')", 12),
            ("has(app", 7),
            ("has()", 4),
            ("app in 'web'", 7),
            ("app in {'a' 'b'}", 12),
            ("app not 'a'", 8),
            ("app starts 'a'", 11),
            ("&& app == 'a'", 0),
            ("app == 'a' &&", 13),
            ("app == 'a' & b == 'c'", 11),
            ("all(", 4),
            ("app", 3),
            ("!", 1),
        ];
        for (text, offset) in cases {
            let err = Selector::parse(text).expect_err(text);
            assert_eq!(err.offset, *offset, "{text:?}: {err}");
            let shown = err.to_string();
            let caret_line = shown.lines().last().unwrap();
            assert_eq!(caret_line.find('^'), Some(2 + offset), "{text:?}:\n{shown}");
        }
    }

    #[test]
    fn and_flattens() {
        let s = Selector::All
            .and(Selector::Has("a".into()))
            .and(Selector::Has("b".into()));
        assert_eq!(
            s,
            Selector::And(vec![Selector::Has("a".into()), Selector::Has("b".into())])
        );
        assert_eq!(Selector::All.and(Selector::All), Selector::All);
    }
}
