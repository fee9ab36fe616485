//! kube-sim: a Kubernetes API emulator for tests. It serves the real HTTP API (discovery,
//! OpenAPI v3, CRUD, patch and server-side apply, watch) to kube-rs and kubectl on loopback,
//! validates custom resources against their CRD schemas (CEL included), and runs Jobs and
//! Deployments whose pods are local processes or, with `--runtime podman`, real containers.
//! Test infrastructure only: the operator does not know it exists.

pub mod api;
pub mod deployments;
pub mod error;
pub mod faults;
pub mod formats;
pub mod http;
pub mod jobs;
pub mod kubelet;
pub mod openapi_docs;
pub mod patch;
pub mod podman;
pub mod probes;
pub mod protobuf;
pub mod registry;
pub mod selectors;
pub mod store;
pub mod table;
pub mod tls;

/// Structural OpenAPI checks, shared with the product's own input validation: one
/// implementation of what the API server enforces.
#[path = "../../../src/api/openapi.rs"]
pub mod openapi_check;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::api::Api;
use crate::deployments::DeploymentController;
use crate::faults::Faults;
use crate::http::Shared;
use crate::jobs::JobController;
pub use crate::kubelet::Runtime;
use crate::kubelet::{InCluster, Kubelet};
use crate::registry::Registry;
use crate::store::Store;

/// How to start the emulator.
#[derive(Clone, Debug)]
pub struct Options {
    /// Address to listen on; port 0 lets the OS choose.
    pub listen: SocketAddr,
    /// Where to write a kubeconfig once the server answers.
    pub kubeconfig: Option<PathBuf>,
    /// Container image → local executable.
    pub images: HashMap<String, PathBuf>,
    /// Where pod volumes and logs live (a temporary directory when unset).
    pub data_dir: Option<PathBuf>,
    /// How pods run: local processes (default) or podman containers.
    pub runtime: Runtime,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:0".parse().expect("valid address"),
            kubeconfig: None,
            images: HashMap::new(),
            data_dir: None,
            runtime: Runtime::Process,
        }
    }
}

/// A running emulator. Dropping it stops the server and kills every pod process.
pub struct KubeSim {
    address: SocketAddr,
    kubeconfig: PathBuf,
    options: Options,
    api: Arc<Api>,
    faults: Arc<Faults>,
    kubelet: Arc<Kubelet>,
    cluster: Option<InCluster>,
    audit: http::AuditLog,
    /// The HTTPS address pods reach the API server at (podman runtime) and its certificate.
    https: Option<(SocketAddr, Arc<tls::Tls>)>,
    /// The HTTP server: what `restart` stops and starts again.
    server: JoinSet<()>,
    /// The kubelet and the Job controller. They outlive an API server restart that keeps the
    /// store, as a node's kubelet and the controller manager outlive one in a cluster.
    controllers: JoinSet<()>,
    scratch: tempfile::TempDir,
}

impl KubeSim {
    /// Starts serving and writes the kubeconfig; returns once clients can connect.
    pub async fn start(options: Options) -> anyhow::Result<Self> {
        let scratch = tempfile::Builder::new()
            .prefix("kube-sim-")
            .tempdir()
            .context("creating a scratch directory")?;
        let api = Arc::new(Api::default());
        let listener = TcpListener::bind(options.listen)
            .await
            .with_context(|| format!("binding {}", options.listen))?;
        let address = listener.local_addr()?;
        let kubeconfig = options
            .kubeconfig
            .clone()
            .unwrap_or_else(|| scratch.path().join("kubeconfig"));
        // Pods in containers connect as in a cluster: in-cluster config, HTTPS, a CA to trust.
        let https = if options.runtime == Runtime::Podman {
            podman::available().map_err(|e| anyhow::anyhow!("--runtime podman: {e}"))?;
            let tls = tls::generate(&address.ip().to_string())?;
            let listener = TcpListener::bind(SocketAddr::new(address.ip(), 0))
                .await
                .context("binding the HTTPS address")?;
            let https_address = listener.local_addr()?;
            Some((listener, https_address, Arc::new(tls)))
        } else {
            None
        };
        let cluster = https.as_ref().map(|(_, address, tls)| InCluster {
            host: address.ip().to_string(),
            port: address.port(),
            ca_pem: tls.ca_pem.clone(),
        });
        let kubelet = Self::kubelet_for(&options, &scratch, &api, cluster.clone());
        let (https_listener, https) = match https {
            Some((listener, address, tls)) => (Some(listener), Some((address, tls))),
            None => (None, None),
        };
        let mut sim = Self {
            address,
            kubeconfig,
            options,
            api,
            faults: Arc::new(Faults::default()),
            kubelet,
            audit: Arc::default(),
            https,
            cluster,
            server: JoinSet::new(),
            controllers: JoinSet::new(),
            scratch,
        };
        sim.start_controllers();
        sim.publish_api_endpoints();
        sim.serve(listener, https_listener);
        write_kubeconfig(&sim.kubeconfig, address)?;
        Ok(sim)
    }

    fn kubelet_for(
        options: &Options,
        scratch: &tempfile::TempDir,
        api: &Arc<Api>,
        cluster: Option<InCluster>,
    ) -> Arc<Kubelet> {
        let data_dir = options
            .data_dir
            .clone()
            .unwrap_or_else(|| scratch.path().join("data"));
        Arc::new(Kubelet::new(
            api.clone(),
            options.images.clone(),
            data_dir,
            options.runtime,
            cluster,
            instance_of(scratch),
        ))
    }

    fn start_controllers(&mut self) {
        self.controllers.spawn(self.kubelet.clone().run());
        self.controllers
            .spawn(JobController::new(self.api.clone()).run());
        self.controllers
            .spawn(DeploymentController::new(self.api.clone()).run());
    }

    fn serve(&mut self, listener: TcpListener, https: Option<TcpListener>) {
        let shared = Arc::new(Shared {
            api: self.api.clone(),
            audit: self.audit.clone(),
            faults: self.faults.clone(),
            kubelet: self.kubelet.clone(),
            address: self.address.to_string(),
        });
        if let (Some(listener), Some((_, tls))) = (https, &self.https) {
            let shared = shared.clone();
            let acceptor = tls.acceptor.clone();
            self.server.spawn(async move {
                let mut connections = JoinSet::new();
                while let Ok((stream, _)) = listener.accept().await {
                    let shared = shared.clone();
                    let acceptor = acceptor.clone();
                    connections.spawn(async move {
                        let Ok(stream) = acceptor.accept(stream).await else {
                            return;
                        };
                        let service =
                            service_fn(move |request| http::handle(shared.clone(), request));
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                    while connections.try_join_next().is_some() {}
                }
            });
        }
        self.server.spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let shared = shared.clone();
                connections.spawn(async move {
                    let service = service_fn(move |request| http::handle(shared.clone(), request));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
                // Reap finished connections so the set stays small.
                while connections.try_join_next().is_some() {}
            }
        });
    }

    /// The `kubernetes` Service and its Endpoints in `default`, as every cluster has them:
    /// where pods reach the API server (what `kubectl get endpoints kubernetes -n default`
    /// answers, and what a NetworkPolicy for the API server must allow). HTTPS only.
    fn publish_api_endpoints(&self) {
        let Some((address, _)) = &self.https else {
            return;
        };
        let (ip, port) = (address.ip().to_string(), address.port());
        let objects = [
            (
                "services",
                serde_json::json!({"apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"component": "apiserver", "provider": "kubernetes"}},
                    "spec": {"type": "ClusterIP", "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]}}),
            ),
            (
                "endpoints",
                serde_json::json!({"apiVersion": "v1", "kind": "Endpoints",
                    "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
                    "subsets": [{"addresses": [{"ip": ip}], "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}]}),
            ),
        ];
        for (resource, object) in objects {
            let created = self
                .api
                .target("", "v1", resource, Some("default"), None, None)
                .and_then(|target| self.api.create(&target, object, &api::Query::default()));
            if let Err(e) = created {
                tracing::warn!(resource, error = ?e, "publishing the API server's address failed");
            }
        }
    }

    /// The HTTPS address pods reach the API server at (`KUBERNETES_SERVICE_HOST`/`PORT`), with
    /// the podman runtime; what a NetworkPolicy for the API server must allow.
    pub fn https_address(&self) -> Option<SocketAddr> {
        self.https.as_ref().map(|(address, _)| *address)
    }

    /// The podman label on every container this emulator starts (`--filter label=…`).
    pub fn podman_label(&self) -> String {
        format!("io.kube-sim.instance={}", instance_of(&self.scratch))
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    pub fn api(&self) -> &Arc<Api> {
        &self.api
    }

    /// Every (verb, API group, resource[/subresource]) the client with `user_agent` requested.
    pub fn audit(&self, user_agent: &str) -> std::collections::BTreeSet<(String, String, String)> {
        self.audit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .filter(|(agent, ..)| agent == user_agent)
            .map(|(_, verb, group, resource)| (verb.clone(), group.clone(), resource.clone()))
            .collect()
    }

    /// How many requests the client with `user_agent` made, by (verb, API group, resource).
    pub fn request_counts(
        &self,
        user_agent: &str,
    ) -> std::collections::BTreeMap<(String, String, String), u64> {
        self.audit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|((agent, ..), _)| agent == user_agent)
            .map(|((_, verb, group, resource), count)| {
                ((verb.clone(), group.clone(), resource.clone()), *count)
            })
            .collect()
    }

    /// A kube-rs client configuration for this server.
    pub fn kube_config(&self) -> kube::Config {
        let mut config = kube::Config::new(self.url().parse().expect("valid url"));
        config.default_namespace = "default".into();
        config
    }

    pub fn client(&self) -> kube::Client {
        kube::Client::try_from(self.kube_config()).expect("a client for a plain HTTP url")
    }

    /// Forces every watch resume from before now to get 410 Gone.
    pub fn expire_resource_versions(&self) {
        self.api.lock().store.compact();
    }

    /// Stops serving (connections and watches drop) and serves again on the same address.
    ///
    /// Keeping the store is an API server restart: pods keep running and their kubelet keeps
    /// reporting, as in a cluster. Losing it is a cluster whose store was wiped: the pods no
    /// longer exist, so the kubelet stops their processes (what a kubelet does with pods the
    /// API server no longer has), and versions continue after the old store's, so every
    /// version a client holds is answered with 410 and it relists.
    pub async fn restart(&mut self, keep_store: bool) -> anyhow::Result<()> {
        self.server.shutdown().await;
        // Watch streams run in tasks of their own; end them with their connections.
        self.faults.close_watches();
        if !keep_store {
            self.controllers.shutdown().await;
            self.kubelet.stop_all().await;
            let previous = self.api.lock().store.resource_version();
            self.api = Arc::new(Api::new(
                Registry::with_builtins(),
                Store::starting_after(previous, api::HISTORY_LIMIT),
            ));
            self.kubelet = Self::kubelet_for(
                &self.options,
                &self.scratch,
                &self.api,
                self.cluster.clone(),
            );
            self.start_controllers();
            self.publish_api_endpoints();
        }
        let listener = rebind(self.address).await?;
        let https = match &self.https {
            Some((address, _)) => Some(rebind(*address).await?),
            None => None,
        };
        self.serve(listener, https);
        Ok(())
    }

    /// Stops serving and kills every pod process, waiting (briefly) until they are gone.
    pub async fn stop(mut self) {
        self.server.shutdown().await;
        self.controllers.shutdown().await;
        self.kubelet.stop_all().await;
    }
}

impl Drop for KubeSim {
    fn drop(&mut self) {
        self.server.abort_all();
        self.controllers.abort_all();
        self.kubelet.kill_all();
    }
}

/// What tells this emulator's containers from others': its scratch directory's unique name.
fn instance_of(scratch: &tempfile::TempDir) -> String {
    scratch
        .path()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Binds `address` again after a restart: the old listener is gone with its task, but the
/// port may linger briefly.
async fn rebind(address: SocketAddr) -> anyhow::Result<TcpListener> {
    let mut attempt = 0;
    loop {
        match TcpListener::bind(address).await {
            Ok(l) => return Ok(l),
            Err(e) if attempt < 50 => {
                attempt += 1;
                tracing::debug!(error = %e, "waiting for the port to free");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e).context("rebinding after restart"),
        }
    }
}

fn write_kubeconfig(path: &Path, address: SocketAddr) -> anyhow::Result<()> {
    let config = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kube-sim\n  cluster:\n    server: http://{address}\nusers:\n- name: kube-sim\n  user: {{}}\ncontexts:\n- name: kube-sim\n  context:\n    cluster: kube-sim\n    user: kube-sim\n    namespace: default\ncurrent-context: kube-sim\n"
    );
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).ok();
    }
    std::fs::write(path, config).with_context(|| format!("writing kubeconfig {}", path.display()))
}
