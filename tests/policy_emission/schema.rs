//! Emitted objects against the upstream CRD schemas: applied to kube-sim with strict
//! validation, and checked with an independent JSON Schema validator.

use super::*;

pub(crate) fn resource_of(object: &Value) -> ApiResource {
    let api_version = object["apiVersion"].as_str().unwrap();
    let kind = object["kind"].as_str().unwrap();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let plural = match kind {
        "NetworkPolicy" if group == "projectcalico.org" => "networkpolicies".to_owned(),
        "NetworkPolicy" => "networkpolicies".to_owned(),
        "CiliumNetworkPolicy" => "ciliumnetworkpolicies".to_owned(),
        "CiliumEgressGatewayPolicy" => "ciliumegressgatewaypolicies".to_owned(),
        "GlobalNetworkSet" => "globalnetworksets".to_owned(),
        "ServiceEntry" => "serviceentries".to_owned(),
        "Gateway" => "gateways".to_owned(),
        "VirtualService" => "virtualservices".to_owned(),
        "DestinationRule" => "destinationrules".to_owned(),
        "Sidecar" => "sidecars".to_owned(),
        "AdminNetworkPolicy" => "adminnetworkpolicies".to_owned(),
        "ClusterNetworkPolicy" => "clusternetworkpolicies".to_owned(),
        "EgressFirewall" => "egressfirewalls".to_owned(),
        other => panic!("unexpected kind {other}"),
    };
    ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: api_version.into(),
        kind: kind.into(),
        plural,
    }
}

/// kube-sim with every upstream CRD of `tests/fixtures/upstream-crds` installed, to apply
/// emitted objects with strict field validation (structure and CEL rules).
pub(crate) struct UpstreamSchemas {
    _sim: kube_sim::KubeSim,
    client: kube::Client,
    namespaces: BTreeSet<String>,
    applied: usize,
}

impl UpstreamSchemas {
    pub(crate) async fn start() -> UpstreamSchemas {
        let sim = kube_sim::KubeSim::start(kube_sim::Options::default())
            .await
            .unwrap();
        let client = sim.client();
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        for file in support::upstream_crd_files() {
            let text = std::fs::read_to_string(&file).unwrap();
            for document in serde_norway::Deserializer::from_str(&text) {
                let value: Value = serde::Deserialize::deserialize(document).unwrap();
                if value.is_null() {
                    continue;
                }
                let crd: CustomResourceDefinition = serde_json::from_value(value).unwrap();
                crds.create(&PostParams::default(), &crd)
                    .await
                    .unwrap_or_else(|e| panic!("{} was refused: {e}", file.display()));
            }
        }
        UpstreamSchemas {
            _sim: sim,
            client,
            namespaces: BTreeSet::new(),
            applied: 0,
        }
    }

    /// Applies `object` with strict validation, after the independent schema validator
    /// accepted it; `source` says where it came from.
    pub(crate) async fn apply(&mut self, object: &Value, source: &str) {
        assert_schema_valid(object, source);
        if let Some(namespace) = object["metadata"]["namespace"].as_str()
            && self.namespaces.insert(namespace.to_owned())
        {
            Api::<k8s_openapi::api::core::v1::Namespace>::all(self.client.clone())
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(json!({"metadata": {"name": namespace}})).unwrap(),
                )
                .await
                .unwrap();
        }
        let resource = resource_of(object);
        let api: Api<DynamicObject> = match object["metadata"]["namespace"].as_str() {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &resource),
            None => Api::all_with(self.client.clone(), &resource),
        };
        let name = object["metadata"]["name"].as_str().unwrap().to_owned();
        api.patch(
            &name,
            &PatchParams::apply("netreach-test").validation_strict(),
            &Patch::Apply(object),
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{} {name} ({source}) was refused by its upstream CRD: {e}\n{}",
                resource.kind,
                serde_norway::to_string(object).unwrap()
            )
        });
        self.applied += 1;
    }
}

#[tokio::test]
async fn every_flavor_is_accepted_by_its_upstream_crd_schema() {
    let mut schemas = UpstreamSchemas::start().await;
    let (spec, addresses) = rich_profile();
    let input = profile_input("maas360-m3", "mdm", &spec, &addresses);
    for flavor in Flavor::iter() {
        let output = emit(flavor, &input);
        assert!(
            !output.objects.is_empty(),
            "{} emitted nothing: {:?}",
            flavor.as_str(),
            output.notes
        );
        for object in output.objects {
            schemas.apply(&object, flavor.as_str()).await;
        }
    }
    assert!(schemas.applied >= 12, "applied {} objects", schemas.applied);
}

#[tokio::test]
async fn ftp_data_ranges_ike_udp_and_esp_render_to_valid_objects_and_say_what_is_left_out() {
    let mut schemas = UpstreamSchemas::start().await;
    let (spec, addresses) = ftp_and_ike_profile();
    let input = profile_input("itsm", "itsm", &spec, &addresses);
    let mut by_flavor = BTreeMap::new();
    for flavor in Flavor::iter() {
        let output = emit(flavor, &input);
        for object in &output.objects {
            schemas.apply(object, flavor.as_str()).await;
        }
        by_flavor.insert(flavor, output);
    }
    let has = |flavor: Flavor, wanted: (&str, &str, u16)| {
        by_flavor[&flavor].objects.iter().flat_map(grants).any(|g| {
            !g.deny
                && (g.destination.as_str(), g.transport.as_str()) == (wanted.0, wanted.1)
                && (g.ports.0..=g.ports.1).contains(&wanted.2)
        })
    };
    let noted = |flavor: Flavor, endpoint: &str, text: &str| {
        by_flavor[&flavor]
            .notes
            .iter()
            .any(|n| n.endpoint == endpoint && n.message.contains(text))
    };
    for flavor in [
        Flavor::NetworkPolicy,
        Flavor::Calico,
        Flavor::AdminNetworkPolicy,
        Flavor::ClusterNetworkPolicy,
        Flavor::EgressFirewall,
    ] {
        let name = flavor.as_str();
        // Address-based flavors allow the resolved address, the others the name.
        let bulk = match flavor {
            Flavor::NetworkPolicy | Flavor::Calico => "198.51.100.21/32",
            _ => "ftp.vendor.example.com",
        };
        assert!(has(flavor, (bulk, "TCP", 21)), "{name}: control port");
        assert!(
            has(flavor, (bulk, "TCP", 50000)),
            "{name}: passive range start"
        );
        assert!(
            has(flavor, (bulk, "TCP", 50100)),
            "{name}: passive range end"
        );
        assert!(
            !has(flavor, (bulk, "TCP", 50101)),
            "{name}: not beyond the range"
        );
        assert!(has(flavor, ("18.233.3.236/32", "UDP", 500)), "{name}: IKE");
        assert!(
            has(flavor, ("18.233.3.236/32", "UDP", 4500)),
            "{name}: NAT-T"
        );
        assert!(
            !has(flavor, ("18.233.3.236/32", "TCP", 500)),
            "{name}: IKE is not TCP"
        );
        assert!(
            noted(
                flavor,
                "bulk-legacy",
                "FTP on port 990 without ftp.passivePorts"
            ),
            "{name}: {:?}",
            by_flavor[&flavor].notes
        );
    }
    // Cilium names hosts: the same ports to the name.
    assert!(has(
        Flavor::Cilium,
        ("ftp.vendor.example.com", "TCP", 50042)
    ));
    assert!(has(Flavor::Cilium, ("34.208.112.206/32", "UDP", 4500)));
    // ESP where the flavor has it (Calico: IP protocol 50), a note where it has not.
    assert!(has(Flavor::Calico, ("18.233.3.236/32", "ESP", 0)));
    assert!(!noted(Flavor::Calico, "vpn-primary", "ESP"));
    for flavor in [
        Flavor::NetworkPolicy,
        Flavor::Cilium,
        Flavor::AdminNetworkPolicy,
        Flavor::ClusterNetworkPolicy,
        Flavor::EgressFirewall,
    ] {
        assert!(
            noted(
                flavor,
                "vpn-primary",
                "ESP (IP protocol 50) cannot be expressed"
            ),
            "{}: {:?}",
            flavor.as_str(),
            by_flavor[&flavor].notes
        );
    }
    // Istio's sidecars carry TCP only: the FTP ports listed one by one, IKE left out, said so.
    assert!(has(Flavor::Istio, ("ftp.vendor.example.com", "TCP", 50100)));
    assert!(noted(Flavor::Istio, "vpn-dr", "bypass the mesh"));
    assert!(
        by_flavor[&Flavor::Istio]
            .objects
            .iter()
            .all(|o| !o["metadata"]["name"].as_str().unwrap().ends_with("vpn-dr")),
        "no ServiceEntry without ports"
    );
    assert!(schemas.applied >= 8, "applied {} objects", schemas.applied);

    let csv = allowlist::csv(std::slice::from_ref(&input));
    assert!(
        csv.starts_with("profile,endpoint,destination,port,transport,protocol,"),
        "{csv}"
    );
    for row in [
        "itsm/itsm,bulk,ftp.vendor.example.com,21,TCP,FTP,198.51.100.21,",
        "itsm/itsm,bulk,ftp.vendor.example.com,50000-50100,TCP,FTP data (passive),198.51.100.21,none,true",
        "itsm/itsm,vpn-primary,18.233.3.236/32,500,UDP,IKE,18.233.3.236/32,none,true",
        "itsm/itsm,vpn-primary,18.233.3.236/32,4500,UDP,IKE (NAT traversal),",
        "itsm/itsm,vpn-dr,34.208.112.206/32,,ESP,IPsec ESP,34.208.112.206/32,none,true",
    ] {
        assert!(csv.contains(row), "{row} missing:\n{csv}");
    }
    let markdown = allowlist::markdown(std::slice::from_ref(&input));
    assert!(
        markdown.contains("| itsm/itsm | vpn-dr | 34.208.112.206/32 | 500 | UDP | IKE |"),
        "{markdown}"
    );
}

#[tokio::test]
async fn every_golden_file_is_accepted_by_its_upstream_crd_schema() {
    let mut schemas = UpstreamSchemas::start().await;
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("tests/golden"))
        .unwrap()
        .flat_map(|profile| std::fs::read_dir(profile.unwrap().path()).unwrap())
        .map(|file| file.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 2 * Flavor::iter().count(), "{files:?}");
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for object in documents(&text) {
            schemas.apply(&object, &file.display().to_string()).await;
        }
    }
    assert!(schemas.applied >= 20, "applied {} objects", schemas.applied);
}

#[tokio::test]
async fn render_of_the_shipped_examples_is_accepted_by_the_upstream_crd_schemas() {
    let mut schemas = UpstreamSchemas::start().await;
    let every = Flavor::iter()
        .map(Flavor::as_str)
        .collect::<Vec<_>>()
        .join(",");
    let (ok, stdout, stderr) = render(&["--flavor", &every], &repo().join("examples"));
    assert!(ok, "{stderr}");
    let objects = documents(&stdout);
    for object in &objects {
        schemas.apply(object, "netreach render examples/").await;
    }
    assert!(schemas.applied >= 10, "applied {} objects", schemas.applied);
}

/// The upstream CRDs' OpenAPI schemas, checked with an independent JSON Schema validator
/// (draft 4, which OpenAPI 3.0 schemas follow): oneOf, anyOf, not, minProperties and
/// maxProperties included, which structural validation on apply does not all enforce.
pub(crate) struct OpenApiSchemas(BTreeMap<(String, String), jsonschema::Validator>);

impl OpenApiSchemas {
    pub(crate) fn load() -> OpenApiSchemas {
        let mut validators = BTreeMap::new();
        for path in support::upstream_crd_files() {
            let crd: Value = serde_norway::from_str(&std::fs::read_to_string(&path).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let group = crd["spec"]["group"].as_str().unwrap();
            let kind = crd["spec"]["names"]["kind"].as_str().unwrap();
            for version in crd["spec"]["versions"].as_array().unwrap() {
                let mut schema = version["schema"]["openAPIV3Schema"].clone();
                ecma_patterns(&mut schema);
                let schema = &schema;
                // Kubernetes matches patterns with Go's RE2, which the regex engine follows.
                let validator = jsonschema::draft4::options()
                    .with_pattern_options(jsonschema::PatternOptions::regex())
                    .build(schema)
                    .unwrap_or_else(|e| panic!("{} does not compile: {e}", path.display()));
                let api_version = format!("{group}/{}", version["name"].as_str().unwrap());
                validators.insert((api_version, kind.to_owned()), validator);
            }
        }
        OpenApiSchemas(validators)
    }

    /// The schema's complaints about `object`; built-in kinds have no CRD (their k8s-openapi
    /// types shape them) and pass.
    pub(crate) fn errors(&self, object: &Value) -> Option<Vec<String>> {
        let key = (
            object["apiVersion"].as_str().unwrap().to_owned(),
            object["kind"].as_str().unwrap().to_owned(),
        );
        let validator = self.0.get(&key)?;
        Some(
            validator
                .iter_errors(object)
                .map(|e| format!("{}: {e}", e.instance_path()))
                .collect(),
        )
    }
}

/// Kubernetes patterns are RE2, whose one-letter class `\PC` JSON Schema's ECMA syntax
/// writes `\P{C}`: the same class, spelt for the validator.
pub(crate) fn ecma_patterns(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                match value {
                    Value::String(pattern) if key == "pattern" => {
                        let mut spelt = String::new();
                        let mut chars = pattern.chars().peekable();
                        while let Some(c) = chars.next() {
                            spelt.push(c);
                            if c != '\\' {
                                continue;
                            }
                            let Some(escaped) = chars.next() else { break };
                            spelt.push(escaped);
                            if matches!(escaped, 'p' | 'P')
                                && let Some(class) = chars.next_if(|n| n.is_ascii_alphabetic())
                            {
                                spelt.push_str(&format!("{{{class}}}"));
                            }
                        }
                        *pattern = spelt;
                    }
                    other => ecma_patterns(other),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(ecma_patterns),
        _ => {}
    }
}

pub(crate) fn openapi_schemas() -> &'static OpenApiSchemas {
    static SCHEMAS: std::sync::OnceLock<OpenApiSchemas> = std::sync::OnceLock::new();
    SCHEMAS.get_or_init(OpenApiSchemas::load)
}

/// Fails when the independent validator refuses `object`.
pub(crate) fn assert_schema_valid(object: &Value, source: &str) {
    let kind = object["kind"].as_str().unwrap_or_default();
    let errors = openapi_schemas().errors(object);
    if object["apiVersion"] != "networking.k8s.io/v1" {
        assert!(
            errors.is_some(),
            "no upstream schema for {} {kind} ({source})",
            object["apiVersion"]
        );
    }
    let errors = errors.unwrap_or_default();
    assert!(
        errors.is_empty(),
        "{kind} ({source}) breaks its upstream schema:\n{}\n{}",
        errors.join("\n"),
        serde_norway::to_string(object).unwrap()
    );
}

#[tokio::test]
async fn a_large_profile_splits_over_cluster_network_policies_the_api_server_accepts() {
    let endpoints: Vec<Value> = (0..40)
        .map(|i| {
            let expect = if i < 3 { "Blocked" } else { "Reachable" };
            let ports: Vec<Value> = (0..30)
                .map(|p| json!({"port": 1000 + p, "protocol": "TCP", "expect": expect}))
                .collect();
            json!({"name": format!("e{i:02}"), "cidr": format!("10.1.{i}.0/24"), "ports": ports})
        })
        .collect();
    let spec = spec(
        json!({"endpoints": endpoints, "policy": {"flavors": ["ClusterNetworkPolicy"], "priority": 100}}),
    );
    let addresses = BTreeMap::new();
    let input = profile_input("big", "mdm", &spec, &addresses);
    let output = emit(Flavor::ClusterNetworkPolicy, &input);
    assert!(output.notes.is_empty(), "{:?}", output.notes);
    // 40 endpoints of 30 ports: 80 rules of at most 25 protocols, and DNS: 4 policies.
    let names: Vec<&str> = output
        .objects
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "netreach-mdm-big",
            "netreach-mdm-big-2",
            "netreach-mdm-big-3",
            "netreach-mdm-big-4"
        ]
    );
    let priorities: Vec<i64> = output
        .objects
        .iter()
        .map(|o| o["spec"]["priority"].as_i64().unwrap())
        .collect();
    assert_eq!(priorities, [100, 101, 102, 103]);
    assert_eq!(output.objects[0]["spec"]["egress"][0]["action"], "Deny");
    assert_eq!(output.objects[0]["spec"]["egress"][0]["name"], "deny-e00");
    assert_eq!(
        widening(
            &output.objects,
            &declared(&spec, &addresses),
            &blocked(&spec, &addresses)
        ),
        None
    );
    let mut schemas = UpstreamSchemas::start().await;
    for object in &output.objects {
        schemas.apply(object, "a profile of 40 endpoints").await;
    }
    // The same rules in one object are what the schema refuses.
    let mut merged = output.objects[0].clone();
    merged["spec"]["egress"] = json!(
        output
            .objects
            .iter()
            .flat_map(|o| o["spec"]["egress"].as_array().unwrap().clone())
            .collect::<Vec<_>>()
    );
    assert!(
        !openapi_schemas().errors(&merged).unwrap().is_empty(),
        "81 rules in one ClusterNetworkPolicy pass the schema"
    );
}

#[test]
fn the_independent_validator_refuses_what_the_upstream_schemas_refuse() {
    let cnp = |protocols: Value| {
        json!({"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
            "metadata": {"name": "x"},
            "spec": {"tier": "Admin", "priority": 1, "subject": {"namespaces": {}},
                "egress": [{"name": "r", "action": "Accept", "to": [{"networks": ["10.0.0.0/8"]}], "protocols": protocols}]}})
    };
    let good = cnp(json!([{"tcp": {"destinationPort": {"number": 443}}}]));
    assert_eq!(openapi_schemas().errors(&good), Some(vec![]));
    // maxProperties 1: a protocol names one of tcp, udp, sctp or destinationNamedPort.
    let both = cnp(
        json!([{"tcp": {"destinationPort": {"number": 443}}, "udp": {"destinationPort": {"number": 53}}}]),
    );
    assert!(!openapi_schemas().errors(&both).unwrap().is_empty());
    let mut wrong_action = good.clone();
    wrong_action["spec"]["egress"][0]["action"] = json!("Allow");
    assert!(!openapi_schemas().errors(&wrong_action).unwrap().is_empty());
}

/// `egressGateways` follows Cilium's multi-gateway design (CFP-38341): a list of the same
/// EgressGateway objects, the first repeated as `egressGateway`. No upstream CRD with the field
/// is among the references, so the object without the list is checked against the upstream
/// schema, and each entry of the list against the upstream schema of `egressGateway`.
#[test]
fn several_egress_gateways_emit_the_list_with_the_first_as_egress_gateway() {
    let (mut spec, addresses) = rich_profile();
    let policy = spec.policy.as_mut().unwrap();
    policy.egress_gateway = None;
    policy.egress_gateways = serde_json::from_value(json!([
        {"nodeSelector": {"egress": "a"}, "egressIP": "192.0.2.10"},
        {"nodeSelector": {"egress": "b"}, "interface": "eth1"},
    ]))
    .unwrap();
    let input = profile_input("maas360-m3", "mdm", &spec, &addresses);
    let objects = emit(Flavor::CiliumEgressGateway, &input).objects;
    assert_eq!(objects.len(), 1);
    let gateways = objects[0]["spec"]["egressGateways"].as_array().unwrap();
    assert_eq!(gateways.len(), 2);
    assert_eq!(objects[0]["spec"]["egressGateway"], gateways[0]);
    assert_eq!(
        gateways[0]["nodeSelector"],
        json!({"matchLabels": {"egress": "a"}})
    );
    assert_eq!(gateways[1]["interface"], "eth1");

    let mut without_list = objects[0].clone();
    without_list["spec"]
        .as_object_mut()
        .unwrap()
        .remove("egressGateways");
    assert_schema_valid(&without_list, "egressGateways");
    let crd: Value = serde_norway::from_str(
        &std::fs::read_to_string(
            repo().join("tests/fixtures/upstream-crds/ciliumegressgatewaypolicy.yaml"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut entry =
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
            ["egressGateway"]
            .clone();
    ecma_patterns(&mut entry);
    let entry = jsonschema::draft4::options()
        .with_pattern_options(jsonschema::PatternOptions::regex())
        .build(&entry)
        .unwrap();
    for gateway in gateways {
        let errors: Vec<String> = entry.iter_errors(gateway).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{gateway}: {errors:?}");
    }
    assert!(
        !entry.is_valid(&json!({"egressIP": "192.0.2.10"})),
        "the entry schema requires nodeSelector"
    );

    // One gateway, either way it is written, leaves the list out: every Cilium accepts it.
    let policy = spec.policy.as_mut().unwrap();
    policy.egress_gateways.truncate(1);
    let input = profile_input("maas360-m3", "mdm", &spec, &addresses);
    let single = emit(Flavor::CiliumEgressGateway, &input).objects;
    assert!(single[0]["spec"].get("egressGateways").is_none());
    assert_eq!(single[0]["spec"]["egressGateway"]["egressIP"], "192.0.2.10");
    assert_schema_valid(&single[0], "one of egressGateways");
}
