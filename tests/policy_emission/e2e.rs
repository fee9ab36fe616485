//! The operator on kube-sim: the shared EgressFirewall, its finalizer, failed applies and
//! concurrent writers.

use super::*;

pub(crate) const WAIT: std::time::Duration = std::time::Duration::from_secs(30);

pub(crate) async fn install_upstream_crd(cluster: &Cluster, file: &str) {
    install_crd(cluster, upstream_crd(file)).await;
}

/// One of `tests/fixtures/upstream-crds`, as JSON.
pub(crate) fn upstream_crd(file: &str) -> Value {
    let text =
        std::fs::read_to_string(repo().join("tests/fixtures/upstream-crds").join(file)).unwrap();
    serde_norway::from_str(&text).unwrap()
}

pub(crate) async fn install_crd(cluster: &Cluster, crd: Value) {
    let crd: CustomResourceDefinition = serde_json::from_value(crd).unwrap();
    Api::<CustomResourceDefinition>::all(cluster.client.clone())
        .create(&PostParams::default(), &crd)
        .await
        .unwrap();
}

pub(crate) fn egress_firewalls(cluster: &Cluster) -> Api<DynamicObject> {
    Api::namespaced_with(
        cluster.client.clone(),
        &cluster.namespace,
        &resource_of(&json!({"apiVersion": "k8s.ovn.org/v1", "kind": "EgressFirewall"})),
    )
}

/// The namespace's EgressFirewall rules, read with `list` (faults injected on `get` stay for
/// the operator).
pub(crate) async fn listed_rules(api: &Api<DynamicObject>) -> Option<Vec<Value>> {
    let list = api.list(&Default::default()).await.ok()?;
    let object = serde_json::to_value(list.items.first()?).ok()?;
    Some(egress(&object))
}

/// Someone else's EgressFirewall in the test's namespace: two Denies around an allow. Returns
/// its rules.
pub(crate) async fn apply_foreign_firewall(cluster: &Cluster) -> Vec<Value> {
    let foreign = vec![
        deny("203.0.113.0/24"),
        allow_tcp(json!({"dnsName": "registry.example.org"}), 443),
        deny("0.0.0.0/0"),
    ];
    let mut theirs = firewall_with(foreign.clone());
    theirs["metadata"]["namespace"] = json!(cluster.namespace);
    cluster
        .apply_yaml(&serde_norway::to_string(&theirs).unwrap())
        .await;
    foreign
}

/// The PolicyApplied message of profile `name`, once its reason is `reason`.
pub(crate) async fn policy_message(
    profiles: &Api<netreach::api::ConnectivityProfile>,
    name: &str,
    reason: &str,
) -> String {
    eventually(WAIT, &format!("PolicyApplied {reason} on {name}"), || {
        let profiles = profiles.clone();
        async move {
            let (found, message) = policy_condition(&profiles.get(name).await.ok()?)?;
            (found == reason).then_some(message)
        }
    })
    .await
}

pub(crate) fn policy_condition(
    profile: &netreach::api::ConnectivityProfile,
) -> Option<(String, String)> {
    profile
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "PolicyApplied")
        .map(|c| (c.reason.clone(), c.message.clone()))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_operator_shares_the_egress_firewall_and_keeps_its_finalizer_until_cleanup_succeeds() {
    use netreach::api::ConnectivityProfile;
    let cluster = Cluster::start("egress-firewall").await;
    install_upstream_crd(&cluster, "egressfirewall.yaml").await;
    install_upstream_crd(&cluster, "adminnetworkpolicy.yaml").await;
    let foreign = apply_foreign_firewall(&cluster).await;
    cluster
        .apply_yaml(
            "apiVersion: netreach.dev/v1alpha1\nkind: ConnectivityProfile\nmetadata: {name: vendor}\nspec:\n  endpoints:\n    - {name: primary, cidr: 203.0.113.7/32, ports: [{port: 443, protocol: TCP}]}\n    - {name: backup, cidr: 198.51.100.0/24, ports: [{port: 8443, protocol: TLS}]}\n  policy:\n    podSelector: {matchLabels: {app: agent}}\n    flavors: [EgressFirewall, AdminNetworkPolicy]\n",
        )
        .await;
    let (_ctx, operator) = cluster.operator(cluster.settings("egress-firewall"));
    let firewalls = egress_firewalls(&cluster);
    let merged = vec![
        foreign[0].clone(),
        foreign[1].clone(),
        allow_tcp(json!({"cidrSelector": "198.51.100.0/24"}), 8443),
        allow_tcp(json!({"cidrSelector": "203.0.113.7/32"}), 443),
        deny("0.0.0.0/0"),
        deny("::/0"),
    ];
    eventually(
        WAIT,
        "NetReach's rules after the others' and before the deny-all",
        || {
            let (firewalls, merged) = (firewalls.clone(), merged.clone());
            async move { (listed_rules(&firewalls).await? == merged).then_some(()) }
        },
    )
    .await;
    let profiles = cluster.api::<ConnectivityProfile>();
    let (reason, message) = eventually(WAIT, "PolicyApplied", || {
        let profiles = profiles.clone();
        async move { policy_condition(&profiles.get("vendor").await.ok()?) }
    })
    .await;
    assert_eq!(reason, "Applied", "{message}");
    assert!(
        message.contains(
            "EgressFirewall: endpoint *: cannot select pods: it applies to every pod in namespace"
        ),
        "the condition says the firewall is namespace-wide: {message}"
    );

    // Cleanup meets server errors (500: the client does not retry those itself): the
    // finalizer stays and the rules come out on a later attempt.
    let Some(sim) = cluster.sim_or_skip("fault injection") else {
        return;
    };
    sim.faults()
        .fail_next("delete", "adminnetworkpolicies", 1, 500);
    sim.faults().fail_next("get", "egressfirewalls", 3, 500);
    profiles
        .delete("vendor", &Default::default())
        .await
        .unwrap();
    // Two cleanups have failed when one injected failure is left: the finalizer must hold
    // until an attempt gets through, which needs that last failure spent first.
    eventually(WAIT, "two cleanup attempts failed", || {
        let faults = sim.faults();
        async move {
            (faults.remaining("delete", "adminnetworkpolicies") == 0
                && faults.remaining("get", "egressfirewalls") <= 1)
                .then_some(())
        }
    })
    .await;
    let waiting = profiles
        .get_opt("vendor")
        .await
        .unwrap()
        .expect("a failed cleanup keeps the profile");
    assert!(
        waiting
            .metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == "connectivityprofiles.netreach.dev/cleanup"),
        "{:?}",
        waiting.metadata.finalizers
    );
    assert_eq!(listed_rules(&firewalls).await.unwrap(), merged);
    eventually(
        WAIT,
        "the profile gone and the others' rules as they wrote them",
        || {
            let (profiles, firewalls, foreign) =
                (profiles.clone(), firewalls.clone(), foreign.clone());
            async move {
                let gone = profiles.get_opt("vendor").await.ok()?.is_none();
                (gone && listed_rules(&firewalls).await? == foreign).then_some(())
            }
        },
    )
    .await;

    // A kind whose CRD was uninstalled has nothing left to clean up: the profile goes.
    cluster
        .apply_yaml(
            "apiVersion: netreach.dev/v1alpha1\nkind: ConnectivityProfile\nmetadata: {name: gone}\nspec:\n  endpoints:\n    - {name: primary, cidr: 203.0.113.7/32, ports: [{port: 443, protocol: TCP}]}\n  policy: {podSelector: {matchLabels: {app: agent}}, flavors: [AdminNetworkPolicy]}\n",
        )
        .await;
    eventually(WAIT, "the AdminNetworkPolicy applied", || {
        let profiles = profiles.clone();
        async move {
            let profile = profiles.get("gone").await.ok()?;
            (profile.status?.policies.len() == 1).then_some(())
        }
    })
    .await;
    Api::<CustomResourceDefinition>::all(cluster.client.clone())
        .delete(
            "adminnetworkpolicies.policy.networking.k8s.io",
            &Default::default(),
        )
        .await
        .unwrap();
    profiles.delete("gone", &Default::default()).await.unwrap();
    eventually(WAIT, "the profile gone although its CRD is not", || {
        let profiles = profiles.clone();
        async move { profiles.get_opt("gone").await.ok()?.is_none().then_some(()) }
    })
    .await;
    operator.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_apply_leaves_the_policy_applied_earlier_in_place() {
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use netreach::api::ConnectivityProfile;
    let cluster = Cluster::start("apply-failure").await;
    cluster
        .apply_yaml(
            "apiVersion: netreach.dev/v1alpha1\nkind: ConnectivityProfile\nmetadata: {name: vendor}\nspec:\n  endpoints:\n    - {name: primary, cidr: 203.0.113.7/32, ports: [{port: 443, protocol: TCP}]}\n  policy: {podSelector: {matchLabels: {app: agent}}, flavors: [NetworkPolicy]}\n",
        )
        .await;
    let (_ctx, operator) = cluster.operator(cluster.settings("apply-failure"));
    let profiles = cluster.api::<ConnectivityProfile>();
    let policies = cluster.api::<NetworkPolicy>();
    eventually(WAIT, "the NetworkPolicy", || {
        let policies = policies.clone();
        async move { policies.get_opt("netreach-vendor").await.ok().flatten() }
    })
    .await;
    let Some(sim) = cluster.sim_or_skip("fault injection") else {
        return;
    };
    sim.faults()
        .fail_next("patch", "networkpolicies", 1000, 500);
    profiles
        .patch(
            "vendor",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"endpoints": [{"name": "primary", "cidr": "203.0.113.8/32", "ports": [{"port": 443, "protocol": "TCP"}]}]}})),
        )
        .await
        .unwrap();
    let message = policy_message(&profiles, "vendor", "ApplyFailed").await;
    assert!(
        message.contains("applying NetworkPolicy netreach-vendor failed"),
        "{message}"
    );
    let kept = policies.get_opt("netreach-vendor").await.unwrap();
    assert!(
        kept.is_some(),
        "a failed apply must not delete the policy applied before"
    );
    let status = profiles.get("vendor").await.unwrap().status.unwrap();
    assert_eq!(
        status.policies.len(),
        1,
        "still on record: {:?}",
        status.policies
    );
    operator.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_profiles_and_a_foreign_writer_lose_no_egress_firewall_rule() {
    use netreach::api::ConnectivityProfile;
    let cluster = Cluster::start("egress-firewall-cas").await;
    install_upstream_crd(&cluster, "egressfirewall.yaml").await;
    let foreign = apply_foreign_firewall(&cluster).await;
    let Some(sim) = cluster.sim_or_skip("holding a request") else {
        return;
    };
    // The first write of NetReach's merge waits, after its read, until the test releases it.
    let held = sim.faults().hold_next("patch", "egressfirewalls");
    for (profile, cidr, port) in [
        ("alpha", "198.51.100.0/24", 8443),
        ("beta", "192.0.2.0/25", 443),
    ] {
        cluster
            .apply_yaml(&format!(
                "apiVersion: netreach.dev/v1alpha1\nkind: ConnectivityProfile\nmetadata: {{name: {profile}}}\nspec:\n  endpoints:\n    - {{name: vendor, cidr: {cidr}, ports: [{{port: {port}, protocol: TCP}}]}}\n  policy: {{flavors: [EgressFirewall]}}\n"
            ))
            .await;
    }
    let (_ctx, operator) = cluster.operator(cluster.settings("egress-firewall-cas"));
    tokio::time::timeout(WAIT, held.arrived())
        .await
        .expect("a profile writes the EgressFirewall");
    // Someone else adds a Deny between NetReach's read and its write.
    let firewalls = egress_firewalls(&cluster);
    let mut current = serde_json::to_value(firewalls.get("default").await.unwrap()).unwrap();
    let late_deny = deny("192.0.2.128/25");
    let mut rules = egress(&current);
    rules.insert(0, late_deny.clone());
    current["spec"]["egress"] = json!(rules);
    firewalls
        .replace(
            "default",
            &PostParams::default(),
            &serde_json::from_value(current).unwrap(),
        )
        .await
        .unwrap();
    held.release();

    let alpha = allow_tcp(json!({"cidrSelector": "198.51.100.0/24"}), 8443);
    let beta = allow_tcp(json!({"cidrSelector": "192.0.2.0/25"}), 443);
    let merged = eventually(WAIT, "both profiles' rules and every foreign one", || {
        let (firewalls, alpha, beta) = (firewalls.clone(), alpha.clone(), beta.clone());
        async move {
            let rules = listed_rules(&firewalls).await?;
            (rules.contains(&alpha) && rules.contains(&beta)).then_some(rules)
        }
    })
    .await;
    // Theirs first in their order (the late Deny included), then NetReach's, then the
    // deny-alls: first match wins, so no Allow of ours overrides a Deny of theirs.
    assert_eq!(
        merged[..3],
        [late_deny, foreign[0].clone(), foreign[1].clone()],
        "{merged:#?}"
    );
    let ours = &merged[3..5];
    assert!(ours.contains(&alpha) && ours.contains(&beta), "{merged:#?}");
    assert_eq!(
        merged[5..],
        [deny("0.0.0.0/0"), deny("::/0")],
        "{merged:#?}"
    );
    let profiles = cluster.api::<ConnectivityProfile>();
    for name in ["alpha", "beta"] {
        let (reason, message) = eventually(WAIT, "PolicyApplied", || {
            let profiles = profiles.clone();
            async move { policy_condition(&profiles.get(name).await.ok()?) }
        })
        .await;
        assert_eq!(reason, "Applied", "{name}: {message}");
    }
    operator.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cilium_without_several_gateways_refuses_the_list_and_the_condition_says_what_to_do() {
    use netreach::api::ConnectivityProfile;
    let cluster = Cluster::start("egress-gateways").await;
    // Cilium's released CRD, which has no egressGateways.
    install_upstream_crd(&cluster, "ciliumegressgatewaypolicy.yaml").await;
    let profile = |gateways: &str| {
        format!(
            "apiVersion: netreach.dev/v1alpha1\nkind: ConnectivityProfile\nmetadata: {{name: spread}}\nspec:\n  endpoints:\n    - {{name: vendor, cidr: 203.0.113.0/24, ports: [{{port: 443, protocol: TCP}}]}}\n  policy:\n    podSelector: {{matchLabels: {{app: agent}}}}\n    flavors: [CiliumEgressGateway]\n{gateways}"
        )
    };
    cluster
        .apply_yaml(&profile(
            "    egressGateways:\n      - {nodeSelector: {gw: a}, egressIP: 192.0.2.10}\n      - {nodeSelector: {gw: b}, egressIP: 192.0.2.11}\n",
        ))
        .await;
    let (_ctx, operator) = cluster.operator(cluster.settings("egress-gateways"));
    let profiles = cluster.api::<ConnectivityProfile>();
    // Server-side apply refuses the field (as Kubernetes does, with a 500): said as a refusal,
    // with what to do.
    let message = policy_message(&profiles, "spread", "ApplyFailed").await;
    assert!(
        message.contains(".spec.egressGateways: field not declared in schema")
            && message.contains("was refused")
            && message.contains("has no egressGateways")
            && !message.contains("retrying"),
        "{message}"
    );
    assert!(
        message.contains("list one gateway in spec.policy.egressGateway"),
        "{message}"
    );
    cluster
        .apply_yaml(&profile(
            "    egressGateway: {nodeSelector: {gw: a}, egressIP: 192.0.2.10}\n",
        ))
        .await;
    let message = policy_message(&profiles, "spread", "Applied").await;
    assert!(message.contains("applied 1 object(s)"), "{message}");
    operator.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_egress_firewall_crd_without_a_field_netreach_writes_refuses_the_first_create() {
    use netreach::api::ConnectivityProfile;
    let cluster = Cluster::start("egress-firewall-strict").await;
    let Some(_) = cluster.sim_or_skip("a CRD older than upstream's") else {
        return;
    };
    // OVN's CRD with the rules' `ports` taken out, as an older release might lack a field.
    let mut crd = upstream_crd("egressfirewall.yaml");
    let rule = &mut crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        ["egress"]["items"]["properties"];
    assert!(rule.as_object_mut().unwrap().remove("ports").is_some());
    install_crd(&cluster, crd).await;
    cluster
        .apply_yaml(
            "apiVersion: netreach.dev/v1alpha1\nkind: ConnectivityProfile\nmetadata: {name: vendor}\nspec:\n  endpoints:\n    - {name: primary, cidr: 203.0.113.7/32, ports: [{port: 443, protocol: TCP}]}\n  policy: {flavors: [EgressFirewall]}\n",
        )
        .await;
    let (_ctx, operator) = cluster.operator(cluster.settings("egress-firewall-strict"));
    let profiles = cluster.api::<ConnectivityProfile>();
    let message = policy_message(&profiles, "vendor", "ApplyFailed").await;
    // A refusal retrying cannot fix, said as such, with what to do.
    assert!(
        message.contains("merging NetReach's rules into EgressFirewall")
            && message.contains("was refused: strict decoding error: unknown field")
            && message.ends_with("upgrade the CRD, or remove the flavor")
            && !message.contains("retrying"),
        "{message}"
    );
    // Refused, not created with the ports dropped (which would allow every port).
    let firewalls = egress_firewalls(&cluster);
    assert!(
        firewalls
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    operator.abort();
}
