//! Label and field selectors, parsed and matched the way the API server does.

use serde_json::Value;

#[derive(Clone, Debug, PartialEq)]
enum LabelTerm {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct LabelSelector(Vec<LabelTerm>);

/// Splits on commas that are not inside parentheses.
fn split_terms(text: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&text[start..]);
    terms
        .into_iter()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect()
}

fn set_values(text: &str) -> Result<Vec<String>, String> {
    let inner = text
        .trim()
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or_else(|| format!("expected a parenthesised set, got {text:?}"))?;
    Ok(inner.split(',').map(|v| v.trim().to_owned()).collect())
}

impl LabelSelector {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut terms = Vec::new();
        for term in split_terms(text) {
            let parsed = if let Some((key, values)) = term.split_once(" notin ") {
                LabelTerm::NotIn(key.trim().into(), set_values(values)?)
            } else if let Some((key, values)) = term.split_once(" in ") {
                LabelTerm::In(key.trim().into(), set_values(values)?)
            } else if let Some((key, value)) = term.split_once("!=") {
                LabelTerm::NotEquals(key.trim().into(), value.trim().into())
            } else if let Some((key, value)) = term.split_once("==") {
                LabelTerm::Equals(key.trim().into(), value.trim().into())
            } else if let Some((key, value)) = term.split_once('=') {
                LabelTerm::Equals(key.trim().into(), value.trim().into())
            } else if let Some(key) = term.strip_prefix('!') {
                LabelTerm::NotExists(key.trim().into())
            } else if term.contains(char::is_whitespace) {
                return Err(format!("unable to parse requirement: {term:?}"));
            } else {
                LabelTerm::Exists(term.into())
            };
            terms.push(parsed);
        }
        Ok(Self(terms))
    }

    pub fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        let get = |key: &str| labels.get(key).and_then(Value::as_str);
        self.0.iter().all(|term| match term {
            LabelTerm::Equals(k, v) => get(k) == Some(v.as_str()),
            LabelTerm::NotEquals(k, v) => get(k) != Some(v.as_str()),
            LabelTerm::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            LabelTerm::NotIn(k, vs) => get(k).is_none_or(|x| vs.iter().all(|v| v != x)),
            LabelTerm::Exists(k) => get(k).is_some(),
            LabelTerm::NotExists(k) => get(k).is_none(),
        })
    }
}

/// One `field=value` or `field!=value` term.
#[derive(Clone, Debug, PartialEq)]
struct FieldTerm {
    /// The field label as the client wrote it.
    label: String,
    /// Where the value is in the object (the label, unless the kind maps it).
    path: String,
    equal: bool,
    value: String,
    /// What an absent field reads as (`false` for a bool, `0` for a count).
    missing: &'static str,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct FieldSelector(Vec<FieldTerm>);

/// The fields one kind can be selected by, as the API server's field label conversion for
/// that kind decides, with where each is in the object.
pub struct FieldLabels {
    /// (label, path in the object, value when absent)
    pub fields: Vec<(String, String, &'static str)>,
    /// The API server's message for any other label (`{label}` is replaced).
    pub refusal: &'static str,
}

impl FieldLabels {
    /// What a kind without a conversion of its own accepts: the name and namespace.
    pub fn metadata_only() -> Self {
        Self::of(
            &["metadata.name", "metadata.namespace"],
            r#""{label}" is not a known field selector: only "metadata.name", "metadata.namespace""#,
        )
    }

    /// Labels that are their own paths.
    pub fn of(labels: &[&str], refusal: &'static str) -> Self {
        Self {
            fields: labels
                .iter()
                .map(|l| (l.to_string(), l.to_string(), ""))
                .collect(),
            refusal,
        }
    }

    pub fn mapped(mut self, label: &str, path: &str, missing: &'static str) -> Self {
        self.fields.push((label.into(), path.into(), missing));
        self
    }
}

impl FieldSelector {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut terms = Vec::new();
        for term in split_terms(text) {
            let (path, equal, value) = if let Some((p, v)) = term.split_once("!=") {
                (p, false, v)
            } else if let Some((p, v)) = term.split_once("==") {
                (p, true, v)
            } else if let Some((p, v)) = term.split_once('=') {
                (p, true, v)
            } else {
                return Err(format!("invalid field selector term {term:?}"));
            };
            terms.push(FieldTerm {
                label: path.trim().to_owned(),
                path: path.trim().to_owned(),
                equal,
                value: value.trim().to_owned(),
                missing: "",
            });
        }
        Ok(Self(terms))
    }

    /// Refuses labels the kind does not support (the API server's 400) and maps the others to
    /// where they are in the object.
    pub fn resolve(&mut self, labels: &FieldLabels) -> Result<(), String> {
        for term in &mut self.0 {
            let Some((_, path, missing)) = labels.fields.iter().find(|(l, ..)| *l == term.label)
            else {
                return Err(labels.refusal.replace("{label}", &term.label));
            };
            term.path = path.clone();
            term.missing = missing;
        }
        Ok(())
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|term| {
            let mut node = object;
            for part in term.path.split('.') {
                node = &node[part];
            }
            let actual = match node {
                Value::String(s) => s.clone(),
                Value::Null => term.missing.to_owned(),
                other => other.to_string(),
            };
            (actual == term.value) == term.equal
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selectors_cover_every_operator() {
        let object = json!({"metadata": {"labels": {"app": "web", "tier": "front"}}});
        for (selector, expected) in [
            ("app=web", true),
            ("app==web,tier=front", true),
            ("app!=web", false),
            ("app in (web, api)", true),
            ("app notin (web)", false),
            ("tier", true),
            ("!tier", false),
            ("missing notin (x)", true),
            ("", true),
        ] {
            assert_eq!(
                LabelSelector::parse(selector).unwrap().matches(&object),
                expected,
                "{selector}"
            );
        }
        assert!(LabelSelector::parse("app in web").is_err());
    }

    #[test]
    fn field_selectors_refuse_labels_the_kind_does_not_support() {
        let labels =
            FieldLabels::metadata_only().mapped("status.successful", "status.succeeded", "0");
        let mut selector = FieldSelector::parse("metadata.name=a,status.successful=0").unwrap();
        selector.resolve(&labels).unwrap();
        assert!(selector.matches(&json!({"metadata": {"name": "a"}, "status": {}})));
        assert!(!selector.matches(&json!({"metadata": {"name": "a"}, "status": {"succeeded": 1}})));
        let mut unknown = FieldSelector::parse("spec.x=1").unwrap();
        assert_eq!(
            unknown.resolve(&labels).unwrap_err(),
            r#""spec.x" is not a known field selector: only "metadata.name", "metadata.namespace""#
        );
    }

    #[test]
    fn field_selectors_follow_dotted_paths() {
        let object =
            json!({"metadata": {"name": "a", "namespace": "ns"}, "status": {"phase": "Running"}});
        assert!(
            FieldSelector::parse("metadata.name=a,metadata.namespace==ns")
                .unwrap()
                .matches(&object)
        );
        assert!(
            FieldSelector::parse("status.phase!=Failed")
                .unwrap()
                .matches(&object)
        );
        assert!(
            !FieldSelector::parse("metadata.name=b")
                .unwrap()
                .matches(&object)
        );
    }
}
