"""Lints and renders the chart with the real Helm engine (helm-python-sdk bundles Helm's Go SDK).

Usage: helm.py CHART RELEASE NAMESPACE < values.json
Prints {"lint": <report>, "manifests": {template: text}} as JSON.
"""
import json
import sys

import helm_python as helm

chart_path, release, namespace = sys.argv[1], sys.argv[2], sys.argv[3]
values = json.load(sys.stdin)
report = helm.lint(chart_path, values, strict=True, namespace=namespace)
with helm.Chart.load(chart_path) as chart:
    manifests = chart.render(values=values, name=release, namespace=namespace, is_install=True)
json.dump({"lint": report, "manifests": manifests}, sys.stdout)
