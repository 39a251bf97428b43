{{/* Names, labels and image references shared by every template of the chart. */}}

{{- define "residency.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* "<release>-<chart>", or just the release name when it already contains the chart name. */}}
{{- define "residency.fullname" -}}
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

{{/*
Labels of the chart's own objects. managed-by is Helm here, never "tts-operator": the ServiceMonitor
and the inference NetworkPolicy select the operator-created objects by `managed-by: tts-operator`, and
must not catch the operator itself.
*/}}
{{- define "residency.commonLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "residency.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: residency
{{- end }}

{{/* Labels of the operator's objects: the common ones plus component. */}}
{{- define "residency.labels" -}}
{{ include "residency.commonLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "residency.selectorLabels" -}}
app.kubernetes.io/name: {{ include "residency.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "residency.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (printf "%s-operator" (include "residency.fullname" .)) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* "<repository>@<digest>" when a digest is set, else "<repository>:<tag or appVersion>". */}}
{{- define "residency.image" -}}
{{- $image := index . 0 }}
{{- $root := index . 1 }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{- define "residency.operatorImage" -}}
{{- include "residency.image" (list .Values.operator.image .) }}
{{- end }}

{{- define "residency.runtimeImage" -}}
{{- include "residency.image" (list .Values.runtime.image .) }}
{{- end }}

{{/* Namespaces that get the inference-pod NetworkPolicy, as a list. */}}
{{- define "residency.networkPolicyNamespaces" -}}
{{- $ns := .Values.networkPolicy.namespaces }}
{{- if not $ns }}{{ $ns = .Values.operator.watchNamespaces }}{{ end }}
{{- if not $ns }}{{ $ns = list .Release.Namespace }}{{ end }}
{{- toJson (uniq $ns) }}
{{- end }}
