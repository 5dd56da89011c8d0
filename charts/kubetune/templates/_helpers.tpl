{{/* Chart name (app.kubernetes.io/name). */}}
{{- define "kubetune.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Resource name prefix: the release name, suffixed with the chart name unless it has it. */}}
{{- define "kubetune.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Name of the operator's objects (Deployment, Service, RBAC, Lease). */}}
{{- define "kubetune.operatorName" -}}
{{- printf "%s-operator" (include "kubetune.fullname" .) }}
{{- end }}

{{- define "kubetune.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Standard labels of every object. */}}
{{- define "kubetune.labels" -}}
helm.sh/chart: {{ include "kubetune.chart" . }}
{{ include "kubetune.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kubetune
{{- end }}

{{/* Labels selecting the operator's pods (also handed to the operator: the per-job
NetworkPolicy admits exactly these pods to the training pods' progress port). */}}
{{- define "kubetune.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubetune.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "kubetune.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kubetune.operatorName" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* An image reference from {repository, tag, digest}; the tag defaults to appVersion. */}}
{{- define "kubetune.image" -}}
{{- $image := index . 0 }}{{- $root := index . 1 }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{/* A settings value as the operator's environment reads it: lists comma-separated, maps
as JSON, whole numbers without an exponent. */}}
{{- define "kubetune.envValue" -}}
{{- $v := . }}
{{- if kindIs "slice" $v }}
{{- join "," $v }}
{{- else if kindIs "map" $v }}
{{- toJson $v }}
{{- else if and (kindIs "float64" $v) (eq (floor $v) $v) }}
{{- printf "%d" (int64 $v) }}
{{- else }}
{{- toString $v }}
{{- end }}
{{- end }}

{{/*
RBAC rules: exactly those of operator/kubetune_operator/rbac.yaml (the single source of
truth; tests/unit/chart/test_rbac_parity.py compares them). Namespaced rules, then the
cluster-scoped ones (nodes), then the leader-election Lease rules.
*/}}
{{- define "kubetune.rbac.namespacedRules" -}}
- apiGroups: ["kubetune.io"]
  resources: ["finetunejobs"]
  verbs: ["list", "watch", "create", "delete"]
- apiGroups: ["kubetune.io"]
  resources: ["finetunejobs/status"]
  verbs: ["patch"]
- apiGroups: ["kubetune.io"]
  resources: ["finetunejobs/finalizers"]
  verbs: ["update"]
- apiGroups: ["kubetune.io"]
  resources: ["finetuneprofiles"]
  verbs: ["list"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "create", "delete", "patch"]
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "create", "delete"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "create", "delete"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["workloads"]
  verbs: ["get", "list", "watch", "create", "delete"]
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["workloads/status"]
  verbs: ["patch"]
- apiGroups: ["kubetune.io"]
  resources: ["modelrollouts"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["kubetune.io"]
  resources: ["modelrollouts/status"]
  verbs: ["patch"]
- apiGroups: ["kubetune.io"]
  resources: ["finetunepipelines"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["kubetune.io"]
  resources: ["finetunepipelines/status"]
  verbs: ["patch"]
- apiGroups: ["kubetune.io"]
  resources: ["finetunepipelines/finalizers"]
  verbs: ["update"]
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["httproutes"]
  verbs: ["get", "update"]
{{- end }}

{{- define "kubetune.rbac.clusterRules" -}}
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["list", "watch"]
- apiGroups: ["kubetune.io"]
  resources: ["clusterfinetuneprofiles"]
  verbs: ["list"]
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["get"]
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["resourceflavors"]
  verbs: ["list", "watch"]
- apiGroups: ["scheduling.k8s.io"]
  resources: ["priorityclasses"]
  verbs: ["get"]
{{- end }}

{{/* The tenant policy tiers (ConfigMaps labelled kubetune.io/tenant-policy), in the release
namespace only. */}}
{{- define "kubetune.rbac.tenantPolicyRules" -}}
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["list"]
{{- end }}

{{- define "kubetune.rbac.leaseRules" -}}
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "create", "update"]
{{- end }}
