//! The EgressFirewall merge: other owners' rules first, ours replaced, nobody's Deny lost.

use super::*;

pub(crate) fn deny(cidr: &str) -> Value {
    json!({"type": "Deny", "to": {"cidrSelector": cidr}})
}

pub(crate) fn allow_tcp(to: Value, port: u16) -> Value {
    json!({"type": "Allow", "to": to, "ports": [{"protocol": "TCP", "port": port}]})
}

/// The EgressFirewall a small profile emits: two CIDR endpoints, one inside someone else's
/// Deny.
pub(crate) fn vendor_firewall(profile: &str, cidrs: &[(&str, u16)]) -> Value {
    let endpoints: Vec<Value> = cidrs
        .iter()
        .enumerate()
        .map(|(i, (cidr, port))| json!({"name": format!("e{i}"), "cidr": cidr, "ports": [{"port": port, "protocol": "TCP"}]}))
        .collect();
    let spec = spec(json!({"endpoints": endpoints, "policy": {"flavors": ["EgressFirewall"]}}));
    let addresses = BTreeMap::new();
    let input = profile_input(profile, "mdm", &spec, &addresses);
    emit(Flavor::EgressFirewall, &input).objects.remove(0)
}

pub(crate) fn firewall_with(rules: Vec<Value>) -> Value {
    json!({"apiVersion": "k8s.ovn.org/v1", "kind": "EgressFirewall", "metadata": {"name": "default", "namespace": "mdm"}, "spec": {"egress": rules}})
}

pub(crate) fn egress(object: &Value) -> Vec<Value> {
    object["spec"]["egress"].as_array().unwrap().clone()
}

#[test]
fn egress_firewall_merge_puts_others_rules_first_so_our_allows_never_override_their_denies() {
    let their_deny = deny("203.0.113.0/24");
    let their_allow = allow_tcp(json!({"dnsName": "registry.example.org"}), 443);
    let existing = firewall_with(vec![
        their_deny.clone(),
        their_allow.clone(),
        deny("0.0.0.0/0"),
    ]);
    let ours = vendor_firewall(
        "vendor",
        &[("203.0.113.7/32", 443), ("198.51.100.0/24", 8443)],
    );
    let merged = merge_egress_firewall(Some(&existing), &ours, "vendor");
    let ours_first = allow_tcp(json!({"cidrSelector": "203.0.113.7/32"}), 443);
    let ours_second = allow_tcp(json!({"cidrSelector": "198.51.100.0/24"}), 8443);
    // First match wins: their Deny of 203.0.113.0/24 still decides for 203.0.113.7.
    assert_eq!(
        egress(&merged.object),
        [
            their_deny.clone(),
            their_allow.clone(),
            ours_first.clone(),
            ours_second.clone(),
            deny("0.0.0.0/0"),
            deny("::/0"),
        ]
    );
    assert!(merged.notes.is_empty(), "{:?}", merged.notes);
    // Their deny-all closes our rules too and stays theirs; we record only what we added.
    let record: Value = serde_json::from_str(
        merged.object["metadata"]["annotations"][EGRESS_FIREWALL_RULES_ANNOTATION]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        record,
        json!({"vendor": [ours_first, ours_second, deny("::/0")]})
    );
    // Taking ours out restores their list exactly.
    let left = unmerge_egress_firewall(&merged.object, "vendor").expect("their rules stay");
    assert_eq!(egress(&left), egress(&existing));
    assert!(left["metadata"]["annotations"].is_null(), "{left}");
}

#[test]
fn egress_firewall_merge_replaces_our_old_rules_and_keeps_other_profiles_rules() {
    let first = merge_egress_firewall(None, &vendor_firewall("a", &[("192.0.2.1/32", 443)]), "a");
    let a_rule = allow_tcp(json!({"cidrSelector": "192.0.2.1/32"}), 443);
    assert_eq!(
        egress(&first.object),
        [a_rule.clone(), deny("0.0.0.0/0"), deny("::/0")]
    );
    // Someone appends a rule of their own before the closing deny-all.
    let mut rules = egress(&first.object);
    let theirs = allow_tcp(json!({"dnsName": "mirror.example.org"}), 443);
    rules.insert(1, theirs.clone());
    let mut shared = first.object.clone();
    shared["spec"]["egress"] = Value::Array(rules);
    // A second profile in the namespace, which also wants a's rule.
    let b = vendor_firewall("b", &[("192.0.2.1/32", 443), ("192.0.2.2/32", 22)]);
    let b_rule = allow_tcp(json!({"cidrSelector": "192.0.2.2/32"}), 22);
    let shared = merge_egress_firewall(Some(&shared), &b, "b").object;
    assert_eq!(
        egress(&shared),
        [
            theirs.clone(),
            a_rule.clone(),
            b_rule.clone(),
            deny("0.0.0.0/0"),
            deny("::/0")
        ]
    );
    // a changes its endpoint: its old rule goes, b's copy of it stays.
    let a_now = allow_tcp(json!({"cidrSelector": "192.0.2.3/32"}), 443);
    let shared = merge_egress_firewall(
        Some(&shared),
        &vendor_firewall("a", &[("192.0.2.3/32", 443)]),
        "a",
    )
    .object;
    assert_eq!(
        egress(&shared),
        [
            theirs.clone(),
            a_rule.clone(),
            b_rule.clone(),
            a_now.clone(),
            deny("0.0.0.0/0"),
            deny("::/0")
        ]
    );
    // a leaves: b's rules and the deny-all b relies on stay.
    let shared = unmerge_egress_firewall(&shared, "a").unwrap();
    assert_eq!(
        egress(&shared),
        [
            theirs.clone(),
            a_rule.clone(),
            b_rule,
            deny("0.0.0.0/0"),
            deny("::/0")
        ]
    );
    // b leaves: only the rule someone else wrote is left, as they wrote it.
    let shared = unmerge_egress_firewall(&shared, "b").unwrap();
    assert_eq!(egress(&shared), [theirs]);
    // Nothing anyone else wrote: the object goes.
    let alone = merge_egress_firewall(None, &vendor_firewall("a", &[("192.0.2.1/32", 443)]), "a");
    assert_eq!(unmerge_egress_firewall(&alone.object, "a"), None);
}

#[test]
fn egress_firewall_merge_never_removes_or_reorders_someone_elses_deny_all() {
    // Someone blocks all egress of the namespace: after NetReach comes and goes, it still does.
    let blocked = firewall_with(vec![deny("0.0.0.0/0"), deny("::/0")]);
    let merged = merge_egress_firewall(
        Some(&blocked),
        &vendor_firewall("vendor", &[("192.0.2.1/32", 443)]),
        "vendor",
    );
    let left = unmerge_egress_firewall(&merged.object, "vendor").expect("their deny-all stays");
    assert_eq!(egress(&left), egress(&blocked));

    // A deny-all in the middle of someone's list decides before our rules: said, not moved.
    let shadowing = firewall_with(vec![
        deny("0.0.0.0/0"),
        allow_tcp(json!({"dnsName": "dead.example.org"}), 443),
    ]);
    let merged = merge_egress_firewall(
        Some(&shadowing),
        &vendor_firewall("vendor", &[("192.0.2.1/32", 443)]),
        "vendor",
    );
    let rules = egress(&merged.object);
    assert_eq!(rules[..2], egress(&shadowing)[..]);
    assert_eq!(merged.notes.len(), 1, "{:?}", merged.notes);
    assert!(
        merged.notes[0].contains("spec.egress[0] denies all traffic to 0.0.0.0/0"),
        "{}",
        merged.notes[0]
    );
    let left = unmerge_egress_firewall(&merged.object, "vendor").unwrap();
    assert_eq!(egress(&left), egress(&shadowing));

    // The single list older versions recorded belongs to the profile reading it.
    let mut legacy =
        merge_egress_firewall(None, &vendor_firewall("v", &[("192.0.2.1/32", 443)]), "v").object;
    let rules = egress(&legacy);
    legacy["metadata"]["annotations"][EGRESS_FIREWALL_RULES_ANNOTATION] =
        Value::String(serde_json::to_string(&rules).unwrap());
    assert_eq!(unmerge_egress_firewall(&legacy, "v"), None);
}

#[test]
fn egress_firewall_says_it_covers_the_whole_namespace_when_the_profile_selects_pods() {
    let (mut spec, addresses) = rich_profile();
    let input = profile_input("p", "mdm", &spec, &addresses);
    let output = emit(Flavor::EgressFirewall, &input);
    assert_eq!(output.objects.len(), 1);
    assert!(
        output
            .notes
            .iter()
            .any(|n| n.endpoint == "*"
                && n.message.contains("applies to every pod in namespace mdm")),
        "{:?}",
        output.notes
    );
    spec.policy.as_mut().unwrap().pod_selector = None;
    let input = profile_input("p", "mdm", &spec, &addresses);
    let output = emit(Flavor::EgressFirewall, &input);
    assert!(
        output.notes.iter().all(|n| n.endpoint != "*"),
        "a profile for every pod of the namespace loses nothing: {:?}",
        output.notes
    );
}
