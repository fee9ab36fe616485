//! Condition types and reasons written by the controllers, in one place.

/// Condition types (adjectives, kstatus-compatible).
pub mod types {
    pub const READY: &str = "Ready";
    pub const REACHABLE: &str = "Reachable";
    pub const TLS_INTERCEPTED: &str = "TLSIntercepted";
    pub const DEGRADED: &str = "Degraded";
    pub const RECONCILING: &str = "Reconciling";
    pub const STALLED: &str = "Stalled";
    pub const RUNNING: &str = "Running";
    pub const ACCEPTED: &str = "Accepted";
    pub const RESOLVED: &str = "Resolved";
    pub const POLICY_APPLIED: &str = "PolicyApplied";
}

/// Condition reasons (CamelCase).
pub mod reasons {
    pub const ALL_REQUIRED_PASS: &str = "AllRequiredEndpointsPass";
    pub const REQUIRED_FAILING: &str = "RequiredEndpointsFailing";
    pub const OPTIONAL_FAILING: &str = "OptionalEndpointsFailing";
    pub const NO_INTERCEPTION: &str = "NoInterception";
    pub const INTERCEPTION_DETECTED: &str = "InterceptionDetected";
    pub const AWAITING_FIRST_RUN: &str = "AwaitingFirstRun";
    pub const RUN_IN_PROGRESS: &str = "RunInProgress";
    pub const RUN_COMPLETE: &str = "RunComplete";
    pub const RUN_FAILED: &str = "RunFailed";
    pub const SUSPENDED: &str = "Suspended";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const PROFILE_NOT_FOUND: &str = "ProfileNotFound";
    pub const VALID: &str = "Valid";
    pub const ALL_RESOLVED: &str = "AllResolved";
    pub const RESOLUTION_FAILED: &str = "ResolutionFailed";
    pub const NOT_CONFIGURED: &str = "NotConfigured";
}
