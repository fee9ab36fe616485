//! `netreach crds`: the CRDs as YAML, printed or written to the committed `crds/` directory.

use std::path::{Path, PathBuf};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

use std::process::ExitCode;

use super::EXIT_FAILED;
use crate::api::Kind;
use crate::error::error_chain;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to render CRD {name} as YAML")]
    Render {
        name: String,
        #[source]
        source: serde_norway::Error,
    },
    #[error("failed to write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One CRD as a YAML document.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> Result<String> {
    serde_norway::to_string(crd).map_err(|source| Error::Render {
        name: crd.metadata.name.clone().unwrap_or_default(),
        source,
    })
}

/// Every CRD, as one multi-document YAML stream.
pub fn all_crds_yaml() -> Result<String> {
    let docs = Kind::ALL
        .into_iter()
        .map(|kind| crd_yaml(&kind.crd()))
        .collect::<Result<Vec<_>>>()?;
    Ok(docs.iter().map(|doc| format!("---\n{doc}")).collect())
}

/// Writes `DIR/<crd name>.yaml` for every CRD and returns the paths written.
pub fn write_crds(dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Write {
        path: dir.to_owned(),
        source,
    })?;
    Kind::ALL
        .into_iter()
        .map(|kind| {
            let path = dir.join(format!("{}.yaml", kind.crd_name()));
            let yaml = crd_yaml(&kind.crd())?;
            std::fs::write(&path, yaml).map_err(|source| Error::Write {
                path: path.clone(),
                source,
            })?;
            Ok(path)
        })
        .collect()
}

#[derive(Debug, clap::Args)]
pub struct CrdsArgs {
    /// Write `DIR/<crd name>.yaml` per CRD instead of printing them.
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
}

pub(super) fn run_crds(args: &CrdsArgs) -> ExitCode {
    let result = match &args.output_dir {
        Some(dir) => write_crds(dir).map(|paths| {
            for path in paths {
                eprintln!("wrote {}", path.display());
            }
        }),
        None => all_crds_yaml().map(|yaml| print!("{yaml}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            ExitCode::from(EXIT_FAILED)
        }
    }
}
