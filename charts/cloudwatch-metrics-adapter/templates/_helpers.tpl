{{/*
Names. The full name is used for the Deployment, Service, ServiceAccount, RBAC and Secret; the
APIService's own name is fixed by Kubernetes (v1beta1.external.metrics.k8s.io).
*/}}
{{- define "cwma.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "cwma.fullname" -}}
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

{{- define "cwma.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "cwma.labels" -}}
helm.sh/chart: {{ include "cwma.chart" . }}
{{ include "cwma.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: cloudwatch-metrics-adapter
{{- end }}

{{/* Selector labels never change across upgrades: Deployment selectors are immutable. */}}
{{- define "cwma.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cwma.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "cwma.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "cwma.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "cwma.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The Secret the pods mount their serving certificate from, in every certificate mode. */}}
{{- define "cwma.servingSecretName" -}}
{{- if eq .Values.certificates.mode "existingSecret" }}
{{- required "certificates.existingSecret.name is required when certificates.mode is existingSecret" .Values.certificates.existingSecret.name }}
{{- else }}
{{- printf "%s-serving-cert" (include "cwma.fullname" .) }}
{{- end }}
{{- end }}

{{/*
The names the aggregator may dial: it connects to <service>.<namespace>.svc and verifies the
certificate for that name. The longer forms are for clients inside the cluster.
*/}}
{{- define "cwma.serviceDnsNames" -}}
{{- $service := include "cwma.fullname" . }}
{{- $ns := .Release.Namespace }}
{{- list $service (printf "%s.%s" $service $ns) (printf "%s.%s.svc" $service $ns) (printf "%s.%s.svc.cluster.local" $service $ns) | toJson }}
{{- end }}

{{/*
The delegates, in --delegates-config form (KEDA's preset first, then `delegate.others`), as YAML;
empty when none is configured. RBAC, the ConfigMap and the Deployment all read it from here.
*/}}
{{- define "cwma.delegates" -}}
{{- $delegates := list }}
{{- $keda := .Values.delegate.keda }}
{{- if $keda.enabled }}
{{- $delegates = append $delegates (dict
  "name" "keda"
  "url" (printf "https://%s.%s.svc:%d" $keda.service $keda.namespace (int $keda.port))
  "ca" (dict "secret" (dict "namespace" $keda.namespace "name" $keda.caSecret.name "key" $keda.caSecret.key))
  "match" (dict "namePattern" $keda.namePattern "selectorKey" $keda.selectorKey)) }}
{{- end }}
{{- range .Values.delegate.others }}
{{- $delegates = append $delegates . }}
{{- end }}
{{- if $delegates }}
{{- toYaml (dict "delegates" $delegates) }}
{{- end }}
{{- end }}

{{/*
Whether the replicas elect a leader: "true" or empty. leaderElection.enabled when set (true or
false), else on with more than one replica (one replica leads alone, without a Lease).
*/}}
{{- define "cwma.leaderElection" -}}
{{- $enabled := .Values.leaderElection.enabled }}
{{- if kindIs "invalid" $enabled }}
{{- if gt (int .Values.replicaCount) 1 }}true{{ end }}
{{- else if $enabled }}true
{{- end }}
{{- end }}

{{/* The Lease the replicas elect a leader on: leaderElection.resourceName, else the full name. */}}
{{- define "cwma.leaseName" -}}
{{- default (include "cwma.fullname" .) .Values.leaderElection.resourceName }}
{{- end }}

{{/*
The name the serving certificate carries in every certificate mode (the aggregator dials it),
so the one followers check on the leader's certificate when they connect to its pod IP.
*/}}
{{- define "cwma.serverName" -}}
{{- printf "%s.%s.svc" (include "cwma.fullname" .) .Release.Namespace }}
{{- end }}
