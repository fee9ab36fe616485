//! Query parameters of a request: selectors, paging, dry run, field manager and validation.

use super::*;

/// Query parameters the verbs understand.
#[derive(Clone, Debug, Default)]
pub struct Query {
    pub label_selector: Option<LabelSelector>,
    pub field_selector: Option<FieldSelector>,
    pub watch: bool,
    pub resource_version: Option<String>,
    pub timeout_seconds: Option<u64>,
    pub allow_bookmarks: bool,
    pub send_initial_events: bool,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
    pub field_manager: Option<String>,
    pub force: bool,
    pub dry_run: bool,
    pub field_validation: Option<String>,
    pub propagation_policy: Option<String>,
    pub container: Option<String>,
    pub tail_lines: Option<usize>,
    pub follow: bool,
    pub as_table: bool,
}

impl Query {
    pub fn parse(query: Option<&str>) -> ApiResult<Self> {
        let mut q = Query::default();
        for pair in query
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
        {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value);
            let truthy = matches!(value.as_str(), "true" | "1" | "");
            match key {
                "labelSelector" => {
                    q.label_selector = Some(LabelSelector::parse(&value).map_err(|e| {
                        ApiError::bad_request(format!("unable to parse requirement: {e}"))
                    })?)
                }
                "fieldSelector" => {
                    q.field_selector =
                        Some(FieldSelector::parse(&value).map_err(ApiError::bad_request)?)
                }
                "watch" => q.watch = truthy,
                "resourceVersion" => q.resource_version = Some(value).filter(|v| !v.is_empty()),
                "timeoutSeconds" => q.timeout_seconds = value.parse().ok(),
                "allowWatchBookmarks" => q.allow_bookmarks = truthy,
                "sendInitialEvents" => q.send_initial_events = truthy,
                "limit" => q.limit = value.parse().ok().filter(|l| *l > 0),
                "continue" => q.continue_token = Some(value).filter(|v| !v.is_empty()),
                "fieldManager" => q.field_manager = Some(value),
                "force" => q.force = truthy,
                "dryRun" => q.dry_run = value == "All",
                "fieldValidation" => q.field_validation = Some(value),
                "propagationPolicy" => q.propagation_policy = Some(value),
                "container" => q.container = Some(value),
                "tailLines" => q.tail_lines = value.parse().ok(),
                "follow" => q.follow = truthy,
                _ => {}
            }
        }
        Ok(q)
    }
}

pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = (bytes[i] == b'%' && i + 2 < bytes.len())
            .then(|| std::str::from_utf8(&bytes[i + 1..i + 3]).ok())
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match (bytes[i], decoded) {
            (_, Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', None) => {
                out.push(b' ');
                i += 1;
            }
            (b, None) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
