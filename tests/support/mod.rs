//! Shared test harness: the loopback protocol peers (started once per test binary unless the
//! suite runner already started them) and small helpers.
#![allow(dead_code)]

pub mod cluster;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// Ports, CA paths and credentials of running peers (from `peers.env`).
pub struct Peers {
    pub dir: PathBuf,
    env: HashMap<String, String>,
}

impl Peers {
    /// The peers of this test run. `NETREACH_PEERS_DIR` names peers the suite runner started;
    /// without it they are started here, under `target/`.
    pub fn get() -> &'static Peers {
        static PEERS: OnceLock<Peers> = OnceLock::new();
        PEERS.get_or_init(|| {
            let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
            let dir = match std::env::var_os("NETREACH_PEERS_DIR") {
                Some(dir) => PathBuf::from(dir),
                None => {
                    // Under /tmp: squid and dovecot drop privileges and need every parent dir o+x.
                    // One fixed place: a later test binary restarts the set an earlier one left.
                    let dir = std::env::temp_dir().join("netreach-test-peers");
                    let out = Command::new("bash")
                        .arg(repo.join("tests/peers/start.sh"))
                        .arg(&dir)
                        .output()
                        .expect("bash runs");
                    assert!(
                        out.status.success(),
                        "starting the loopback peers failed (run tests/peers/install.sh first):\n{}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    dir
                }
            };
            let text = std::fs::read_to_string(dir.join("peers.env"))
                .unwrap_or_else(|e| panic!("no peers.env in {}: {e}", dir.display()));
            let env = text
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            Peers { dir, env }
        })
    }

    pub fn var(&self, key: &str) -> &str {
        self.env
            .get(key)
            .unwrap_or_else(|| panic!("{key} missing from peers.env"))
    }

    pub fn port(&self, key: &str) -> u16 {
        self.var(key).parse().unwrap()
    }

    pub fn public_ca(&self) -> PathBuf {
        PathBuf::from(self.var("PEERS_CA_PUBLIC"))
    }

    pub fn proxy_ca(&self) -> PathBuf {
        PathBuf::from(self.var("PEERS_CA_PROXY"))
    }

    pub fn dns(&self) -> String {
        format!("127.0.0.1:{}", self.port("PEER_DNS_PORT"))
    }
}

/// The upstream CRDs the emitted policies are checked against (Cilium, Calico, Istio, OVN,
/// network-policy-api), in name order.
pub fn upstream_crd_files() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/upstream-crds");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}
