//! Bounds on input, checked before parsing cost can grow: bytes per file and per document,
//! expanded YAML nodes (aliases included), and the ObjectMeta limits the API server enforces.

use std::collections::BTreeMap;

use granit_parser::{Event, Parser};
use serde_json::Value;

use super::openapi::FieldError;

/// The API server's default request size limit: no object larger than this can be applied.
pub const MAX_DOCUMENT_BYTES: usize = 3 * 1024 * 1024;
/// Default size limit of one input file (`--max-file-mib` raises it for local use).
pub const DEFAULT_MAX_FILE_BYTES: usize = MAX_DOCUMENT_BYTES;
/// Most YAML nodes one document may expand to, aliases included. The largest object the schema
/// admits (1,000 endpoints) needs far fewer; the bound keeps a refused document cheap.
pub const MAX_NODES: usize = 100_000;
/// Expansion allowed beyond the nodes written: aliases may at most double a document, plus
/// this many nodes, so `&defaults` style reuse works and an alias bomb cannot.
pub const ALIAS_ALLOWANCE: usize = 10_000;
/// Most documents in one file: far more objects than anyone applies at once, few enough that
/// a stream of empty documents is refused at once.
pub const MAX_DOCUMENTS: usize = 10_000;
/// Deepest nesting of collections in a document.
pub const MAX_DEPTH: usize = 64;
/// The API server's limit on all annotations of an object together (keys and values).
pub const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;
/// Longest label value, and the name part of label and annotation keys.
pub const MAX_LABEL_VALUE: usize = 63;

/// Limits one load applies.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_file_bytes: usize,
    /// How the caller can raise `max_file_bytes` (a flag), for the refusal message.
    pub raised_by: Option<&'static str>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            raised_by: None,
        }
    }
}

/// `3 MiB`, `256 KiB`, `512 B`.
pub fn human_bytes(bytes: usize) -> String {
    const KIB: usize = 1024;
    const MIB: usize = 1024 * 1024;
    match bytes {
        b if b >= MIB && b % MIB == 0 => format!("{} MiB", b / MIB),
        b if b >= MIB => format!("{:.1} MiB", b as f64 / MIB as f64),
        b if b >= KIB && b % KIB == 0 => format!("{} KiB", b / KIB),
        b if b >= KIB => format!("{:.1} KiB", b as f64 / KIB as f64),
        b => format!("{b} B"),
    }
}

/// A document the scan refused: its 1-based index and why.
#[derive(Debug, PartialEq, Eq)]
pub struct ScanRefusal {
    pub document: usize,
    pub message: String,
}

/// Walks the YAML event stream of `text` without building anything, counting per document the
/// bytes, the nodes written and the nodes aliases expand to. Memory stays proportional to the
/// nesting depth and the number of anchors, whatever the aliases would expand to.
pub fn scan(text: &str) -> Result<(), ScanRefusal> {
    let mut document = 0usize;
    let mut scan = DocumentScan::default();
    for event in Parser::new_from_str(text) {
        let (event, span) = match event {
            Ok(event) => event,
            Err(e) => {
                return Err(ScanRefusal {
                    document: document.max(1),
                    message: format!(
                        "malformed YAML at line {}, column {}: {}",
                        e.marker().line(),
                        e.marker().col() + 1,
                        e.info()
                    ),
                });
            }
        };
        let offset = span.start.byte_offset().unwrap_or(span.start.index());
        if matches!(event, Event::DocumentStart(..)) {
            document += 1;
        }
        let refuse = |message: String| ScanRefusal { document, message };
        if document > MAX_DOCUMENTS {
            return Err(refuse(format!(
                "the file holds more than {MAX_DOCUMENTS} YAML documents; split it"
            )));
        }
        match event {
            Event::DocumentStart(..) => {
                scan = DocumentScan {
                    start: offset,
                    ..DocumentScan::default()
                };
            }
            Event::DocumentEnd => {
                let end = span.end.byte_offset().unwrap_or(span.end.index());
                scan.end_document(end).map_err(refuse)?;
            }
            Event::Scalar(_, _, anchor, _) => {
                scan.node().map_err(refuse)?;
                scan.close_anchor_scalar(anchor);
            }
            Event::SequenceStart(_, anchor, _) | Event::MappingStart(_, anchor, _) => {
                scan.node().map_err(refuse)?;
                scan.open.push((anchor, scan.expanded - 1));
                if scan.open.len() > MAX_DEPTH {
                    return Err(refuse(format!(
                        "nested deeper than {MAX_DEPTH} levels; no ConnectivityProfile or EgressCheck needs that"
                    )));
                }
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((anchor, start)) = scan.open.pop()
                    && anchor != 0
                {
                    scan.sizes.insert(anchor, scan.expanded - start);
                }
            }
            Event::Alias(anchor) => {
                // An alias to a collection still open (a cycle) counts once; the parser behind
                // serde refuses it anyway.
                let size = scan.sizes.get(&anchor).copied().unwrap_or(1);
                scan.written += 1;
                scan.expanded = scan.expanded.saturating_add(size);
                scan.check_absolute().map_err(refuse)?;
            }
            Event::StreamEnd => break,
            _ => {}
        }
        let reached = span.end.byte_offset().unwrap_or(span.end.index());
        if reached.saturating_sub(scan.start) > MAX_DOCUMENT_BYTES {
            return Err(refuse(too_large_document()));
        }
    }
    Ok(())
}

fn too_large_document() -> String {
    format!(
        "the document is larger than {}, the API server's request limit: no cluster would accept it; split the endpoints over several profiles",
        human_bytes(MAX_DOCUMENT_BYTES)
    )
}

#[derive(Default)]
struct DocumentScan {
    start: usize,
    written: usize,
    expanded: usize,
    /// Open collections: their anchor (0 for none) and the expanded count before them.
    open: Vec<(usize, usize)>,
    /// Expanded size of each anchored node, by anchor id.
    sizes: BTreeMap<usize, usize>,
}

impl DocumentScan {
    fn node(&mut self) -> Result<(), String> {
        self.written += 1;
        self.expanded = self.expanded.saturating_add(1);
        self.check_absolute()
    }

    fn close_anchor_scalar(&mut self, anchor: usize) {
        if anchor != 0 {
            self.sizes.insert(anchor, 1);
        }
    }

    fn check_absolute(&self) -> Result<(), String> {
        if self.expanded > MAX_NODES {
            return Err(if self.expanded > self.written {
                format!(
                    "the document expands to more than {MAX_NODES} YAML nodes through its aliases; write the repeated parts out instead of aliasing them"
                )
            } else {
                format!(
                    "the document has more than {MAX_NODES} YAML nodes; split the endpoints over several profiles"
                )
            });
        }
        Ok(())
    }

    fn end_document(&self, end: usize) -> Result<(), String> {
        if end.saturating_sub(self.start) > MAX_DOCUMENT_BYTES {
            return Err(too_large_document());
        }
        let allowed = self.written.saturating_mul(2) + ALIAS_ALLOWANCE;
        if self.expanded > allowed {
            return Err(format!(
                "its aliases expand {} written YAML nodes to {}, more than twice the document plus {ALIAS_ALLOWANCE}; write the repeated parts out instead of aliasing them",
                self.written, self.expanded
            ));
        }
        Ok(())
    }
}

/// The ObjectMeta limits the API server enforces on every object: name and namespace
/// syntax, label keys and values, annotation keys and their total size.
pub fn check_object_meta(object: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let Some(meta) = object.get("metadata").and_then(Value::as_object) else {
        return errors;
    };
    let error = |path: String, message: String| FieldError { path, message };
    if let Some(name) = meta.get("name").and_then(Value::as_str)
        && !name.is_empty()
        && let Err(why) = dns_subdomain(name)
    {
        errors.push(error(
            "metadata.name".into(),
            format!("Invalid value: {why}"),
        ));
    }
    if let Some(namespace) = meta.get("namespace").and_then(Value::as_str)
        && let Err(why) = dns_label(namespace)
    {
        errors.push(error(
            "metadata.namespace".into(),
            format!("Invalid value: {why}"),
        ));
    }
    if let Some(labels) = meta.get("labels").and_then(Value::as_object) {
        for (key, value) in labels {
            if let Err(why) = qualified_name(key) {
                errors.push(error(
                    format!("metadata.labels[{key}]"),
                    format!("Invalid value: {why}"),
                ));
            }
            if let Some(value) = value.as_str()
                && let Err(why) = label_value(value)
            {
                errors.push(error(
                    format!("metadata.labels[{key}]"),
                    format!("Invalid value: {why}"),
                ));
            }
        }
    }
    if let Some(annotations) = meta.get("annotations").and_then(Value::as_object) {
        let mut total = 0usize;
        for (key, value) in annotations {
            if let Err(why) = qualified_name(key) {
                errors.push(error(
                    format!("metadata.annotations[{key}]"),
                    format!("Invalid value: {why}"),
                ));
            }
            total += key.len() + value.as_str().map_or(0, str::len);
        }
        if total > MAX_ANNOTATIONS_BYTES {
            errors.push(error(
                "metadata.annotations".into(),
                format!(
                    "Too long: must have at most {MAX_ANNOTATIONS_BYTES} bytes ({}), has {total}; the API server refuses it, so keep large data out of annotations",
                    human_bytes(MAX_ANNOTATIONS_BYTES)
                ),
            ));
        }
    }
    errors
}

fn shown(text: &str) -> String {
    let short: String = text.chars().take(64).collect();
    let escaped = short.escape_debug().to_string();
    if text.chars().count() > 64 {
        format!("\"{escaped}…\"")
    } else {
        format!("\"{escaped}\"")
    }
}

fn is_label_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
}

fn dns_label(text: &str) -> Result<(), String> {
    let ok = !text.is_empty()
        && text.len() <= 63
        && text.chars().all(is_label_char)
        && !text.starts_with('-')
        && !text.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{}: must be a DNS label (at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit)",
            shown(text)
        ))
    }
}

fn dns_subdomain(text: &str) -> Result<(), String> {
    let ok = text.len() <= 253 && text.split('.').all(|label| dns_label(label).is_ok());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{}: must be a DNS subdomain (at most 253 characters of lowercase letters, digits, '-' and '.')",
            shown(text)
        ))
    }
}

/// `[prefix/]name`: prefix a DNS subdomain, name at most 63 alphanumerics, '-', '_' or '.'
/// beginning and ending with an alphanumeric.
fn qualified_name(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let name_ok = !name.is_empty()
        && name.len() <= MAX_LABEL_VALUE
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    let prefix_ok = prefix.is_none_or(|p| dns_subdomain(p).is_ok());
    if name_ok && prefix_ok {
        Ok(())
    } else {
        Err(format!(
            "{}: keys are an optional DNS-subdomain prefix and '/', then a name of at most {MAX_LABEL_VALUE} letters, digits, '-', '_' or '.'",
            shown(key)
        ))
    }
}

fn label_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    let ok = value.len() <= MAX_LABEL_VALUE
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && value.starts_with(|c: char| c.is_ascii_alphanumeric())
        && value.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{}: label values are at most {MAX_LABEL_VALUE} letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
            shown(value)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flat_alias_bomb_is_refused_without_expanding_it() {
        let items = vec!["x"; 50_000].join(",");
        let aliases = vec!["*a"; 100].join(",");
        let text = format!("a: &a [{items}]\nb: [{aliases}]\n");
        let refusal = scan(&text).unwrap_err();
        assert_eq!(refusal.document, 1);
        assert!(
            refusal.message.contains("through its aliases"),
            "{}",
            refusal.message
        );
    }

    #[test]
    fn nested_laughs_are_refused_and_modest_reuse_is_not() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for level in 1..12 {
            let previous = format!("*a{}", level - 1);
            text.push_str(&format!(
                "a{level}: &a{level} [{}]\n",
                [previous.as_str(); 10].join(", ")
            ));
        }
        assert!(scan(&text).is_err());
        let reuse = "defaults: &d {timeout: 5s, required: true}\none: *d\ntwo: *d\n---\nthree: 3\n";
        assert_eq!(scan(reuse), Ok(()));
    }

    #[test]
    fn sizes_count_per_document() {
        let big = "x".repeat(MAX_DOCUMENT_BYTES / 2);
        let two = format!("a: {big}\n---\nb: {big}\n");
        assert_eq!(scan(&two), Ok(()), "each document is under the limit");
        let one = format!("a: {big}\nb: {big}\nc: x\n");
        let refusal = scan(&one).unwrap_err();
        assert!(refusal.message.contains("3 MiB"), "{}", refusal.message);
    }

    #[test]
    fn annotations_over_256_kib_and_bad_labels_are_refused() {
        let object = serde_json::json!({
            "metadata": {
                "name": "ok",
                "annotations": {"a": "x".repeat(MAX_ANNOTATIONS_BYTES)},
                "labels": {"app": "bad value!"}
            }
        });
        let errors = check_object_meta(&object);
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["metadata.labels[app]", "metadata.annotations"]);
        assert!(
            errors[1].message.contains("256 KiB"),
            "{}",
            errors[1].message
        );
        let fine = serde_json::json!({
            "metadata": {"name": "a.b-c", "namespace": "mdm", "labels": {"example.com/app": "x_1"}}
        });
        assert!(check_object_meta(&fine).is_empty());
    }
}
