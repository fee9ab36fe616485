//! Loading ConnectivityProfiles and EgressChecks from YAML files (one or many documents each),
//! with errors that name the file, the document, the field and what is wrong.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::api::limits::{self, Limits, human_bytes};
use crate::api::{self, ConnectivityProfile, EgressCheck, Kind};

/// A typed object read from a file.
#[derive(Clone, Debug)]
pub enum Document {
    Profile(Box<ConnectivityProfile>),
    Check(Box<EgressCheck>),
}

/// Where a document came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub file: PathBuf,
    /// 1-based position of the document in its file.
    pub index: usize,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: document {}", self.file.display(), self.index)
    }
}

#[derive(Clone, Debug)]
pub struct Loaded {
    pub source: Source,
    pub document: Document,
}

/// Why a file or a document was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadError {
    pub file: PathBuf,
    /// 1-based document index, when the error is inside one.
    pub document: Option<usize>,
    /// `Kind namespace/name`, when known.
    pub object: Option<String>,
    /// Field path, e.g. `spec.endpoints[2].ports[0].port`.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(index) = self.document {
            write!(f, ": document {index}")?;
        }
        if let Some(object) = &self.object {
            write!(f, " ({object})")?;
        }
        if let Some(field) = self.field.as_deref().filter(|f| !f.is_empty()) {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for LoadError {}

/// All problems found across the inputs (never empty).
#[derive(Debug)]
pub struct LoadErrors(pub Vec<LoadError>);

impl fmt::Display for LoadErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadErrors {}

/// Loads every document of every path; a directory contributes its `*.yaml` and `*.yml`
/// files in name order. Returns every error found, not just the first.
pub fn load_paths(paths: &[PathBuf]) -> Result<Vec<Loaded>, LoadErrors> {
    load_paths_with(paths, &Limits::default())
}

/// [`load_paths`] with explicit limits.
pub fn load_paths_with(paths: &[PathBuf], limits: &Limits) -> Result<Vec<Loaded>, LoadErrors> {
    let mut loaded = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        let files = match expand(path) {
            Ok(files) => files,
            Err(error) => {
                errors.push(error);
                continue;
            }
        };
        for file in files {
            match read_bounded(&file, limits) {
                Ok(text) => match load_str(&file, &text) {
                    Ok(mut docs) => loaded.append(&mut docs),
                    Err(LoadErrors(mut errs)) => errors.append(&mut errs),
                },
                Err(error) => errors.push(error),
            }
        }
    }
    if errors.is_empty() {
        if loaded.is_empty() {
            let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
            return Err(LoadErrors(vec![LoadError {
                file: PathBuf::from(shown.join(", ")),
                document: None,
                object: None,
                field: None,
                message: "no ConnectivityProfile or EgressCheck found".into(),
            }]));
        }
        Ok(loaded)
    } else {
        Err(LoadErrors(errors))
    }
}

/// Reads a file, but never more than `max` bytes of it: a larger file is refused before its
/// content costs anything (a pipe or `/dev/stdin` included, whose size is unknown up front).
pub fn read_bounded(file: &Path, bounds: &Limits) -> Result<String, LoadError> {
    use std::io::Read as _;
    let max = bounds.max_file_bytes;
    let too_large = |size: String| {
        let raise = bounds
            .raised_by
            .map(|how| format!(", or raise the limit with {how} for local use"))
            .unwrap_or_default();
        file_error(
            file,
            format!(
                "the file is {size}, more than the limit of {}; split it{raise} (the API server refuses objects over {})",
                human_bytes(max),
                human_bytes(limits::MAX_DOCUMENT_BYTES)
            ),
        )
    };
    let handle = std::fs::File::open(file)
        .map_err(|e| file_error(file, format!("cannot read the file: {e}")))?;
    if let Ok(meta) = handle.metadata()
        && meta.is_file()
        && meta.len() > max as u64
    {
        return Err(too_large(human_bytes(
            usize::try_from(meta.len()).unwrap_or(usize::MAX),
        )));
    }
    let mut bytes = Vec::new();
    handle
        .take(max as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| file_error(file, format!("cannot read the file: {e}")))?;
    if bytes.len() > max {
        return Err(too_large(format!("over {}", human_bytes(max))));
    }
    String::from_utf8(bytes).map_err(|e| {
        file_error(
            file,
            format!(
                "the file is not UTF-8 text (invalid byte at offset {}); save it as UTF-8",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

fn file_error(file: &Path, message: String) -> LoadError {
    LoadError {
        file: file.to_owned(),
        document: None,
        object: None,
        field: None,
        message,
    }
}

fn expand(path: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let meta =
        std::fs::metadata(path).map_err(|e| file_error(path, format!("cannot read: {e}")))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files = Vec::new();
    collect_yaml(path, &mut files)?;
    files.sort();
    if files.is_empty() {
        return Err(file_error(
            path,
            "the directory holds no .yaml or .yml files".into(),
        ));
    }
    Ok(files)
}

/// Every `*.yaml`/`*.yml` below `dir`, subdirectories included.
fn collect_yaml(dir: &Path, files: &mut Vec<PathBuf>) -> Result<(), LoadError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| file_error(dir, format!("cannot list the directory: {e}")))?;
    for path in entries.filter_map(|entry| entry.ok().map(|e| e.path())) {
        if path.is_dir() {
            collect_yaml(&path, files)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            files.push(path);
        }
    }
    Ok(())
}

/// Loads every document of one YAML text; `file` names it in errors. The text is scanned
/// first, so a document too large or expanding too far is refused before it is built.
pub fn load_str(file: &Path, text: &str) -> Result<Vec<Loaded>, LoadErrors> {
    // Editors on Windows start UTF-8 files with a byte order mark; YAML allows it there.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if let Err(refusal) = limits::scan(text) {
        return Err(LoadErrors(vec![LoadError {
            file: file.to_owned(),
            document: Some(refusal.document),
            object: None,
            field: None,
            message: refusal.message,
        }]));
    }
    let mut loaded = Vec::new();
    let mut errors = Vec::new();
    for (offset, document) in serde_norway::Deserializer::from_str(text).enumerate() {
        let index = offset + 1;
        let at = |object: Option<String>, field: Option<String>, message: String| LoadError {
            file: file.to_owned(),
            document: Some(index),
            object,
            field,
            message,
        };
        let value = match Value::deserialize(document) {
            Ok(value) => value,
            Err(e) => {
                let message = match e.location() {
                    Some(loc) => format!(
                        "malformed YAML at line {}, column {}: {e}",
                        loc.line(),
                        loc.column()
                    ),
                    None => format!("malformed YAML: {e}"),
                };
                errors.push(at(None, None, message));
                // The YAML stream cannot be trusted past a syntax error.
                break;
            }
        };
        if value.is_null() {
            continue;
        }
        match decode(&value) {
            Ok(document) => loaded.push(Loaded {
                source: Source {
                    file: file.to_owned(),
                    index,
                },
                document,
            }),
            Err((object, field_errors)) => {
                errors.extend(
                    field_errors
                        .into_iter()
                        .map(|(field, message)| at(object.clone(), field, message)),
                );
            }
        }
    }
    if errors.is_empty() {
        Ok(loaded)
    } else {
        Err(LoadErrors(errors))
    }
}

type DecodeFailure = (Option<String>, Vec<(Option<String>, String)>);

/// Checks one document and turns it into a typed object.
fn decode(value: &Value) -> Result<Document, DecodeFailure> {
    let Some(fields) = value.as_object() else {
        return Err((
            None,
            vec![(None, "expected a Kubernetes object (a YAML mapping)".into())],
        ));
    };
    let text = |key: &str| fields.get(key).and_then(Value::as_str);
    let (api_version, kind_name) = (text("apiVersion"), text("kind"));
    let name = value.pointer("/metadata/name").and_then(Value::as_str);
    let namespace = value.pointer("/metadata/namespace").and_then(Value::as_str);
    let object = kind_name.map(|k| match (namespace, name) {
        (Some(ns), Some(n)) => format!("{k} {ns}/{n}"),
        (None, Some(n)) => format!("{k} {n}"),
        _ => k.to_owned(),
    });
    let fail =
        |field: &str, message: String| (object.clone(), vec![(Some(field.to_owned()), message)]);

    let Some(kind_name) = kind_name else {
        return Err(fail(
            "kind",
            "Required value: every document needs a kind".into(),
        ));
    };
    let Some(kind) = Kind::from_name(kind_name) else {
        return Err(fail(
            "kind",
            format!(
                "unknown kind {kind_name:?} (apiVersion {}): netreach reads ConnectivityProfile and EgressCheck ({})",
                api_version.unwrap_or("unset"),
                api::API_VERSION
            ),
        ));
    };
    if api_version != Some(api::API_VERSION) {
        return Err(fail(
            "apiVersion",
            format!(
                "Unsupported value: {:?}: {kind} is served as {}",
                api_version.unwrap_or(""),
                api::API_VERSION
            ),
        ));
    }
    let mut problems: Vec<(Option<String>, String)> = Vec::new();
    if name.is_none_or(str::is_empty) {
        problems.push((
            Some("metadata.name".into()),
            "Required value: name is required".into(),
        ));
    }
    problems.extend(
        limits::check_object_meta(value)
            .into_iter()
            .map(|e| (Some(e.path), e.message)),
    );
    problems.extend(
        api::validate_object(kind, value)
            .into_iter()
            .map(|e| (Some(e.path), e.message)),
    );
    if !problems.is_empty() {
        return Err((object, problems));
    }
    let typed = match kind {
        Kind::ConnectivityProfile => deserialize(value).map(|p| Document::Profile(Box::new(p))),
        Kind::EgressCheck => deserialize(value).map(|c| Document::Check(Box::new(c))),
    };
    typed.map_err(|(field, message)| (object, vec![(Some(field), message)]))
}

fn deserialize<T: serde::de::DeserializeOwned>(value: &Value) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(value)
        .map_err(|e| (e.path().to_string(), e.inner().to_string()))
}

impl Document {
    pub fn kind(&self) -> Kind {
        match self {
            Document::Profile(_) => Kind::ConnectivityProfile,
            Document::Check(_) => Kind::EgressCheck,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Document::Profile(p) => p.metadata.name.as_deref().unwrap_or_default(),
            Document::Check(c) => c.metadata.name.as_deref().unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusals(spec: &str) -> String {
        let yaml = format!(
            "apiVersion: netreach.dev/v1alpha1\nkind: ConnectivityProfile\nmetadata: {{name: p}}\nspec:\n{spec}"
        );
        match load_str(Path::new("p.yaml"), &yaml) {
            Ok(_) => panic!("accepted:\n{yaml}"),
            Err(errors) => errors.to_string(),
        }
    }

    #[test]
    fn zero_durations_are_refused_by_the_schema_rule() {
        let errors = refusals(
            "  defaults: {timeout: 0s}\n  endpoints:\n  - {name: a, host: a.example.com, timeout: 0.0ms, ports: [{port: 443, protocol: HTTPS}]}\n",
        );
        for field in ["spec.defaults.timeout", "spec.endpoints[0].timeout"] {
            assert!(
                errors.contains(&format!(
                    "{field}: Invalid value: must be greater than zero"
                )),
                "{field}: {errors}"
            );
        }
    }

    #[test]
    fn non_ascii_host_names_are_explained_with_the_character_escaped() {
        let errors = refusals(
            "  endpoints:\n  - {name: a, host: \"vendor\u{200b}.example.com\", ports: [{port: 443, protocol: HTTPS}]}\n",
        );
        assert!(
            errors.contains(
                "host names are lowercase ASCII; write internationalized names in punycode (xn--…)"
            ),
            "{errors}"
        );
        assert!(errors.contains("\\u{200b}"), "{errors}");
        assert!(!errors.contains('\u{200b}'), "shown escaped: {errors}");
    }

    #[test]
    fn a_byte_order_mark_before_the_first_document_is_accepted() {
        let yaml = "\u{feff}apiVersion: netreach.dev/v1alpha1\nkind: ConnectivityProfile\nmetadata: {name: p}\nspec:\n  endpoints:\n  - {name: a, host: a.example.com, ports: [{port: 443, protocol: HTTPS}]}\n";
        let loaded = load_str(Path::new("p.yaml"), yaml).unwrap();
        assert_eq!(loaded.len(), 1);
        // Anywhere else it is a character like any other, and refused where names are checked.
        assert!(
            load_str(
                Path::new("p.yaml"),
                &yaml.replace("name: a,", "name: \"a\u{feff}\",")
            )
            .is_err()
        );
    }
}
