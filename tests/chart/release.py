"""Installs or uninstalls the chart as a release in a cluster with the real Helm engine
(helm-python-sdk bundles Helm's Go SDK), as `helm install` / `helm uninstall` do.

Usage: release.py install KUBECONFIG CHART RELEASE NAMESPACE < values.json
       release.py uninstall KUBECONFIG RELEASE NAMESPACE
Prints the release's status as JSON: {"name", "namespace", "status", "revision"}.
"""
import json
import sys

import helm_python as helm

action, kubeconfig = sys.argv[1], sys.argv[2]
if action == "install":
    chart, release, namespace = sys.argv[3], sys.argv[4], sys.argv[5]
    values = json.load(sys.stdin)
    with helm.Config(kubeconfig_path=kubeconfig, namespace=namespace) as config:
        result = config.install(chart, release, values, namespace=namespace, timeout=120)
elif action == "uninstall":
    release, namespace = sys.argv[3], sys.argv[4]
    with helm.Config(kubeconfig_path=kubeconfig, namespace=namespace) as config:
        result = config.uninstall(release, timeout=120)
    result = result.get("release", result)
else:
    sys.exit(f"release.py: unknown action {action!r} (install or uninstall)")
json.dump(
    {
        "name": result.get("name"),
        "namespace": result.get("namespace"),
        "status": result.get("status"),
        "revision": result.get("revision"),
    },
    sys.stdout,
)
