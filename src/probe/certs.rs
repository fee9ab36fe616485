//! Saving the certificate chains endpoints presented as PEM files, one per endpoint×port
//! (`DIR/<endpoint>-<port>.pem`, leaf first), e.g. to upload a directory's certificate to a
//! vendor's tenant.

use std::path::{Path, PathBuf};

use base64::Engine as _;

use super::context::Chains;

/// PEM text of DER certificates, in the order given.
pub fn pem(chain: &[Vec<u8>]) -> String {
    let mut out = String::new();
    for der in chain {
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        let text = base64::engine::general_purpose::STANDARD.encode(der);
        for line in text.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}

/// Writes every chain to `dir` (created when missing); returns the files written.
pub fn save(dir: &Path, chains: &Chains) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for ((endpoint, port), chain) in chains {
        let path = dir.join(format!("{endpoint}-{port}.pem"));
        std::fs::write(&path, pem(chain))?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_wraps_at_64_columns_and_keeps_the_order() {
        let text = pem(&[vec![0u8; 100], vec![1u8; 3]]);
        let blocks: Vec<&str> = text.split("-----END CERTIFICATE-----\n").collect();
        assert_eq!(blocks.len(), 3, "{text}");
        assert!(text.lines().all(|l| l.len() <= 64));
        assert!(
            blocks[1].contains("AQEB"),
            "second certificate second: {text}"
        );
    }
}
