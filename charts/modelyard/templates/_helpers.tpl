{{/* Chart name, overridable. */}}
{{- define "modelyard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: <release>-<chart> unless the release name already contains the chart name. */}}
{{- define "modelyard.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "modelyard.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object of this release. */}}
{{- define "modelyard.labels" -}}
helm.sh/chart: {{ include "modelyard.chart" . }}
app.kubernetes.io/part-of: modelyard
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}

{{/* Selector labels of the operator pods. */}}
{{- define "modelyard.operatorSelectorLabels" -}}
app.kubernetes.io/name: {{ include "modelyard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "modelyard.operatorLabels" -}}
{{ include "modelyard.labels" . }}
{{ include "modelyard.operatorSelectorLabels" . }}
{{- end }}

{{/* Labels of release-wide objects (RBAC, config, monitoring). */}}
{{- define "modelyard.commonLabels" -}}
{{ include "modelyard.labels" . }}
app.kubernetes.io/name: {{ include "modelyard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "modelyard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "modelyard.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "modelyard.peeringName" -}}
{{- default (include "modelyard.fullname" .) .Values.peering.name }}
{{- end }}

{{/* "repository:tag" with the tag defaulting to appVersion. Call with (list $image $). */}}
{{- define "modelyard.image" -}}
{{- $img := index . 0 }}{{- $root := index . 1 }}
{{- printf "%s:%s" $img.repository (default $root.Chart.AppVersion $img.tag) }}
{{- end }}

{{/* Namespaces that get NetworkPolicies. */}}
{{- define "modelyard.policyNamespaces" -}}
{{- $ns := .Values.networkPolicy.namespaces | default .Values.watchNamespaces | default (list .Release.Namespace) }}
{{- toJson $ns }}
{{- end }}

{{/* Labels of the pods the operator creates (DESIGN.md contract). */}}
{{- define "modelyard.workloadSelector" -}}
app.kubernetes.io/name: modelyard
app.kubernetes.io/component: {{ . }}
{{- end }}

{{/* Selector labels of the gateway pods. */}}
{{- define "modelyard.gatewaySelectorLabels" -}}
app.kubernetes.io/name: {{ include "modelyard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end }}

{{- define "modelyard.gatewayLabels" -}}
{{ include "modelyard.labels" . }}
{{ include "modelyard.gatewaySelectorLabels" . }}
{{- end }}

{{- define "modelyard.gatewayName" -}}
{{- printf "%s-gateway" (include "modelyard.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
