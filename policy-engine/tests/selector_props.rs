//! Property tests of the selector language: printing round-trips, the parser never panics
//! and points inside its input, and Kubernetes LabelSelectors keep their meaning.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use policy_engine::k8s::label_selector;
use policy_engine::selector::{Labels, Selector};
use proptest::prelude::*;

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_string()),
        Just("b".to_string()),
        Just("k8s.io/c-d_e".to_string())
    ]
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("x".to_string()),
        Just("xy".to_string()),
        Just("y z".to_string()),
        Just(String::new())
    ]
}

fn selector() -> impl Strategy<Value = Selector> {
    let leaf = prop_oneof![
        Just(Selector::All),
        key().prop_map(Selector::Has),
        (key(), value()).prop_map(|(k, v)| Selector::Eq(k, v)),
        (key(), value()).prop_map(|(k, v)| Selector::NotEq(k, v)),
        (key(), prop::collection::btree_set(value(), 0..3)).prop_map(|(k, s)| Selector::In(k, s)),
        (key(), prop::collection::btree_set(value(), 0..3))
            .prop_map(|(k, s)| Selector::NotIn(k, s)),
        (key(), value()).prop_map(|(k, v)| Selector::Contains(k, v)),
        (key(), value()).prop_map(|(k, v)| Selector::StartsWith(k, v)),
        (key(), value()).prop_map(|(k, v)| Selector::EndsWith(k, v)),
    ];
    leaf.prop_recursive(4, 24, 3, |inner| {
        prop_oneof![
            inner.clone().prop_map(|s| Selector::Not(Box::new(s))),
            prop::collection::vec(inner.clone(), 0..3).prop_map(Selector::And),
            prop::collection::vec(inner, 0..3).prop_map(Selector::Or),
        ]
    })
}

fn labels() -> impl Strategy<Value = Labels> {
    prop::collection::btree_map(key(), value(), 0..3)
}

proptest! {
    #[test]
    fn display_parses_back_to_the_same_predicate(sel in selector(), ls in prop::collection::vec(labels(), 1..6)) {
        let text = sel.to_string();
        let back = Selector::parse(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        for l in &ls {
            prop_assert_eq!(sel.matches(l), back.matches(l), "{} on {:?}", text, l);
        }
    }

    #[test]
    fn parser_never_panics_and_points_inside(s in "[a-z =!&|(){},'\"]{0,24}") {
        if let Err(e) = Selector::parse(&s) {
            prop_assert!(e.offset <= s.len());
            prop_assert!(s.is_char_boundary(e.offset));
            prop_assert!(e.to_string().lines().last().unwrap().ends_with('^'));
        }
    }

    #[test]
    fn label_selector_keeps_kubernetes_meaning(
        match_labels in prop::collection::btree_map(key(), value(), 0..2),
        exprs in prop::collection::vec((key(), 0..4u8, prop::collection::btree_set(value(), 1..3)), 0..3),
        l in labels(),
    ) {
        let ops = ["In", "NotIn", "Exists", "DoesNotExist"];
        let reqs: Vec<LabelSelectorRequirement> = exprs
            .iter()
            .map(|(k, op, vals)| LabelSelectorRequirement {
                key: k.clone(),
                operator: ops[usize::from(*op)].to_string(),
                values: (*op < 2).then(|| vals.iter().cloned().collect()),
            })
            .collect();
        let ls = LabelSelector { match_labels: Some(match_labels.clone()), match_expressions: Some(reqs) };
        let sel = label_selector(&ls, "spec.podSelector").unwrap();
        // Kubernetes semantics, written out directly.
        let want = match_labels.iter().all(|(k, v)| l.get(k) == Some(v))
            && exprs.iter().all(|(k, op, vals): &(String, u8, BTreeSet<String>)| match op {
                0 => l.get(k).is_some_and(|v| vals.contains(v)),
                1 => !l.get(k).is_some_and(|v| vals.contains(v)),
                2 => l.contains_key(k),
                _ => !l.contains_key(k),
            });
        prop_assert_eq!(sel.matches(&l), want);
    }
}
