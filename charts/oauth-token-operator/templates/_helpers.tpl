{{/* Chart name, overridable. */}}
{{- define "oauth-token-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Full name of the release's objects. A release called like the chart (the usual
`helm install oauth-token-operator ...`) is not repeated: oauth-token-operator, not
oauth-token-operator-oauth-token-operator.
*/}}
{{- define "oauth-token-operator.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "oauth-token-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels that select the operator's pods; never change them on upgrade. */}}
{{- define "oauth-token-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "oauth-token-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "oauth-token-operator.labels" -}}
helm.sh/chart: {{ include "oauth-token-operator.chart" . }}
{{ include "oauth-token-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "oauth-token-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "oauth-token-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "oauth-token-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/*
Whether kopf peering is on: asked for, or needed because several replicas run. Without
peering every replica would refresh every token, and two refreshes of one rotating refresh
token make the provider revoke the grant. Renders "true" or "".
*/}}
{{- define "oauth-token-operator.peering" -}}
{{- if or .Values.peering.enabled (gt (int .Values.replicas) 1) -}}true{{- end -}}
{{- end -}}

{{/*
RBAC rules on the namespaced resources the operator touches; used by the ClusterRole in
cluster-wide mode and by the per-namespace Roles otherwise. Exactly what the operator does:
*/}}
{{- define "oauth-token-operator.namespacedRules" -}}
# Watch OAuthClients; never write their spec or metadata.
- apiGroups: [oauth-token-operator.dev]
  resources: [oauthclients]
  verbs: [get, list, watch]
# Report status through the status subresource only.
- apiGroups: [oauth-token-operator.dev]
  resources: [oauthclients/status]
  verbs: [patch, update]
# Read credentials and CA bundle Secrets; create and update the output Secrets it owns
# (the operator checks ownership before every write). No delete: garbage collection
# removes output Secrets through their ownerReference.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch, create, update, patch]
# spec.providerRef with kind OAuthProvider: read the namespace's providers (watched, so that
# an edit reaches their clients within seconds) and report what was found at each.
- apiGroups: [oauth-token-operator.dev]
  resources: [oauthproviders]
  verbs: [get, list, watch]
- apiGroups: [oauth-token-operator.dev]
  resources: [oauthproviders/status]
  verbs: [patch]
# Read the ConfigMaps that spec.secret.valuesFrom names (template values); no list or watch.
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get]
{{- if .Values.rolloutTargets.enabled }}
# Restart the workloads OAuthClients list in spec.rolloutTargets (a pod-template annotation).
- apiGroups: [apps]
  resources: [deployments, statefulsets, daemonsets]
  verbs: [get, patch]
{{- end }}
{{- if .Values.serviceAccountTokens.enabled }}
# clientAuthentication service_account_token: read a ServiceAccount's opt-in annotation and
# mint its tokens (TokenRequest) for the audience its annotation lists.
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [get]
- apiGroups: [""]
  resources: [serviceaccounts/token]
  verbs: [create]
{{- end }}
# Events on OAuthClients (kopf posts core/v1 Events; events.k8s.io for newer clients).
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end -}}

{{/*
Where a client on the same host reaches the listeners with hostNetwork: listenAddress unless
it is a wildcard, else 127.0.0.1. Used by the probes and `helm test`.
*/}}
{{/*
Cluster-scoped rules for clientAuthentication service_account_token, in both modes: a
TokenReview tells whether the kube-apiserver itself would accept a minted token (such a
token is never sent), and the ServiceAccount issuer's discovery document names the issuer.
*/}}
{{- define "oauth-token-operator.serviceAccountTokenClusterRules" -}}
{{- if .Values.serviceAccountTokens.enabled }}
- apiGroups: [authentication.k8s.io]
  resources: [tokenreviews]
  verbs: [create]
- nonResourceURLs: [/.well-known/openid-configuration]
  verbs: [get]
{{- end }}
{{- end -}}

{{- define "oauth-token-operator.localHost" -}}
{{- $address := .Values.listenAddress -}}
{{- if and $address (not (has $address (list "0.0.0.0" "::"))) -}}
{{- $address -}}
{{- else -}}
127.0.0.1
{{- end -}}
{{- end -}}
