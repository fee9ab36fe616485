//! Kubernetes API emulator for NetReach tests (not part of the operator).
