//! A cluster for end-to-end tests: kube-sim in-process with the `netreach` binary as the probe
//! image, or a real cluster when `NETREACH_E2E_KUBECONFIG` names one (its probe pods must then
//! reach the loopback peers, e.g. a kind cluster on host networking, and
//! `NETREACH_E2E_PROBE_IMAGE` must name a pushed image). Each test gets its own namespace.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, CustomResourceExt};
use netreach::api::{ConnectivityProfile, EgressCheck};
use netreach::controller::{Context, Settings};
use serde_json::json;
use tokio::task::JoinHandle;

pub const PROBE_IMAGE: &str = "ghcr.io/netreach/netreach:e2e";
/// An image without netreach in it, so its probe pods fail: on a real cluster busybox cannot
/// run `probe`; kube-sim runs `false` for it.
pub const BROKEN_PROBE_IMAGE: &str = "docker.io/library/busybox:1.36";

pub struct Cluster {
    pub client: Client,
    pub namespace: String,
    pub probe_image: String,
    pub sim: Option<kube_sim::KubeSim>,
    pub kubeconfig: PathBuf,
}

impl Cluster {
    /// A fresh namespace on kube-sim (or the configured real cluster), CRDs installed.
    pub async fn start(test: &str) -> Cluster {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (client, sim, kubeconfig, probe_image) =
            match std::env::var_os("NETREACH_E2E_KUBECONFIG") {
                Some(path) => {
                    let config = kube::Config::from_custom_kubeconfig(
                        kube::config::Kubeconfig::read_from(&path).expect("readable kubeconfig"),
                        &Default::default(),
                    )
                    .await
                    .expect("usable kubeconfig");
                    let image = std::env::var("NETREACH_E2E_PROBE_IMAGE")
                        .expect("NETREACH_E2E_PROBE_IMAGE names the probe image");
                    (
                        Client::try_from(config).unwrap(),
                        None,
                        PathBuf::from(path),
                        image,
                    )
                }
                None => {
                    let images = HashMap::from([
                        (
                            PROBE_IMAGE.to_owned(),
                            PathBuf::from(env!("CARGO_BIN_EXE_netreach")),
                        ),
                        (BROKEN_PROBE_IMAGE.to_owned(), PathBuf::from("/bin/false")),
                    ]);
                    let sim = kube_sim::KubeSim::start(kube_sim::Options {
                        images,
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                    let path = sim.kubeconfig_path().to_owned();
                    (sim.client(), Some(sim), path, PROBE_IMAGE.to_owned())
                }
            };
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        for crd in [ConnectivityProfile::crd(), EgressCheck::crd()] {
            let name = crd.metadata.name.clone().unwrap();
            crds.patch(
                &name,
                &PatchParams::apply("netreach-e2e").force(),
                &Patch::Apply(&crd),
            )
            .await
            .unwrap();
        }
        let base = format!(
            "e2e-{}",
            test.replace('_', "-").chars().take(40).collect::<String>()
        );
        let namespaces: Api<Namespace> = Api::all(client.clone());
        // kube-sim is new for every test; a real cluster keeps namespaces (one being deleted
        // answers 409 for a while), so each run there gets a namespace of its own.
        let namespace = if sim.is_some() {
            base
        } else {
            let unique = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
                % 1_000_000_000;
            format!("{base}-{unique:09}")
        };
        let ns = serde_json::from_value(
            json!({"metadata": {"name": namespace, "labels": {"netreach.dev/e2e": "true"}}}),
        )
        .unwrap();
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .unwrap();
        Cluster {
            client,
            namespace,
            probe_image,
            sim,
            kubeconfig,
        }
    }

    /// kube-sim, for what only it can do (fault injection, holding a request, counting
    /// calls); on a real cluster the test says why it does not apply there and ends.
    pub fn sim_or_skip(&self, needs: &str) -> Option<&kube_sim::KubeSim> {
        if self.sim.is_none() {
            eprintln!(
                "not run on a real cluster: this test needs kube-sim for {needs} (it runs on kube-sim in CI)"
            );
        }
        self.sim.as_ref()
    }

    pub fn settings(&self, identity: &str) -> Settings {
        Settings {
            probe_image: self.probe_image.clone(),
            namespaces: vec![self.namespace.clone()],
            leader_election: false,
            lease_namespace: self.namespace.clone(),
            lease_name: "netreach-operator".into(),
            lease_duration: Duration::from_secs(3),
            identity: identity.into(),
            max_concurrent_reconciles: 16,
        }
    }

    /// Runs an operator replica in this process until the handle is aborted.
    pub fn operator(&self, settings: Settings) -> (Arc<Context>, JoinHandle<()>) {
        let ctx = Arc::new(Context::new(
            self.client.clone(),
            settings,
            Default::default(),
        ));
        let running = ctx.clone();
        let handle = tokio::spawn(async move {
            netreach::controller::run(running, vec![], std::future::pending()).await
        });
        (ctx, handle)
    }

    /// Runs an operator replica that serves `/metrics` and whose log lines are kept.
    pub async fn observed_operator(&self, settings: Settings) -> ObservedOperator {
        let ctx = Arc::new(Context::new(
            self.client.clone(),
            settings,
            Default::default(),
        ));
        // A free port, taken back just before the operator binds it.
        let metrics_addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let logs = Logs::default();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("debug"))
            .with_ansi(false)
            .with_writer(logs.clone())
            .finish();
        let running = ctx.clone();
        let handle = tokio::spawn(tracing::instrument::WithSubscriber::with_subscriber(
            netreach::controller::run(running, vec![metrics_addr], std::future::pending()),
            subscriber,
        ));
        ObservedOperator {
            ctx,
            handle,
            metrics_addr,
            logs,
        }
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Applies YAML documents into the test namespace.
    pub async fn apply_yaml(&self, yaml: &str) {
        for document in serde_norway::Deserializer::from_str(yaml) {
            let value: serde_json::Value = serde::Deserialize::deserialize(document).unwrap();
            if value.is_null() {
                continue;
            }
            let object: kube::api::DynamicObject = serde_json::from_value(value.clone()).unwrap();
            let types = object.types.clone().unwrap();
            let (group, version) = types
                .api_version
                .split_once('/')
                .unwrap_or(("", &types.api_version));
            let gvk = kube::api::GroupVersionKind::gvk(group, version, &types.kind);
            let (resource, _) = kube::discovery::pinned_kind(&self.client, &gvk)
                .await
                .unwrap();
            let api: Api<kube::api::DynamicObject> =
                Api::namespaced_with(self.client.clone(), &self.namespace, &resource);
            let name = object.metadata.name.clone().unwrap();
            api.patch(
                &name,
                &PatchParams::apply("netreach-e2e").force(),
                &Patch::Apply(&value),
            )
            .await
            .unwrap();
        }
    }
}

/// An operator replica with its metrics endpoint and its log.
pub struct ObservedOperator {
    pub ctx: Arc<Context>,
    pub handle: JoinHandle<()>,
    pub metrics_addr: std::net::SocketAddr,
    pub logs: Logs,
}

impl ObservedOperator {
    /// The `/metrics` text, as Prometheus scrapes it.
    pub async fn scrape(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let text = eventually(Duration::from_secs(10), "the metrics endpoint", || async {
            let mut stream = tokio::net::TcpStream::connect(self.metrics_addr)
                .await
                .ok()?;
            stream
                .write_all(b"GET /metrics HTTP/1.1\r\nhost: operator\r\nconnection: close\r\n\r\n")
                .await
                .ok()?;
            let mut response = String::new();
            stream.read_to_string(&mut response).await.ok()?;
            Some(response)
        })
        .await;
        let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        body.to_owned()
    }
}

/// Log output kept in memory.
#[derive(Clone, Default)]
pub struct Logs(Arc<std::sync::Mutex<Vec<u8>>>);

impl Logs {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Polls `probe` until it returns Some, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
