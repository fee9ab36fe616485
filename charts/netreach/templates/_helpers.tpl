{{- define "netreach.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "netreach.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "netreach.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "netreach.serviceAccountName" -}}
{{- default (include "netreach.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "netreach.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The rules the operator needs in every watched namespace (or cluster-wide): exactly the
calls src/controller makes, checked in both directions by tests/chart.rs. */}}
{{- define "netreach.rules" -}}
{{- /* A check reads its profile from the watch, and itself fresh (get) before starting a
run; patch: the profiles' cleanup finalizer. */}}
- apiGroups: [netreach.dev]
  resources: [connectivityprofiles]
  verbs: [list, watch, patch]
- apiGroups: [netreach.dev]
  resources: [egresschecks]
  verbs: [get, list, watch]
- apiGroups: [netreach.dev]
  resources: [connectivityprofiles/status, egresschecks/status]
  verbs: [patch]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [list, watch, create, delete]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, create, delete]
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
- apiGroups: [""]
  resources: [pods/log]
  verbs: [get]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- $flavors := .Values.policy.allowedFlavors }}
{{- /* Policy kinds: patch is server-side apply (which creates as well), delete removes what
is no longer emitted. */}}
{{- if has "NetworkPolicy" $flavors }}
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [patch, delete]
{{- end }}
{{- if has "Cilium" $flavors }}
- apiGroups: [cilium.io]
  resources: [ciliumnetworkpolicies]
  verbs: [patch, delete]
{{- end }}
{{- if has "Calico" $flavors }}
- apiGroups: [projectcalico.org]
  resources: [networkpolicies]
  verbs: [patch, delete]
{{- end }}
{{- if has "Istio" $flavors }}
- apiGroups: [networking.istio.io]
  resources: [serviceentries, gateways, virtualservices, destinationrules, sidecars]
  verbs: [patch, delete]
{{- end }}
{{- if has "EgressFirewall" $flavors }}
{{- /* get: the namespace's one EgressFirewall is shared; NetReach merges its rules into it,
as a compare-and-swap: create when there is none yet, patch or delete naming the version read. */}}
- apiGroups: [k8s.ovn.org]
  resources: [egressfirewalls]
  verbs: [get, create, patch, delete]
{{- end }}
{{- end -}}

{{/* Cluster-scoped kinds: always a ClusterRole. */}}
{{- define "netreach.clusterRules" -}}
{{- $flavors := .Values.policy.allowedFlavors }}
{{- if has "CiliumEgressGateway" $flavors }}
- apiGroups: [cilium.io]
  resources: [ciliumegressgatewaypolicies]
  verbs: [patch, delete]
{{- end }}
{{- if has "Calico" $flavors }}
- apiGroups: [projectcalico.org]
  resources: [globalnetworksets]
  verbs: [patch, delete]
{{- end }}
{{- if has "AdminNetworkPolicy" $flavors }}
- apiGroups: [policy.networking.k8s.io]
  resources: [adminnetworkpolicies]
  verbs: [patch, delete]
{{- end }}
{{- if has "ClusterNetworkPolicy" $flavors }}
- apiGroups: [policy.networking.k8s.io]
  resources: [clusternetworkpolicies]
  verbs: [patch, delete]
{{- end }}
{{- end -}}
