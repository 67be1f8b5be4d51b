{{- define "sdserve.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "sdserve.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "sdserve.labels" -}}
{{ include "sdserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "sdserve.engineCacheClaim" -}}
{{- .Values.engineCache.existingClaim | default (printf "%s-engines" (include "sdserve.fullname" .)) -}}
{{- end -}}

{{/* A probe of `route`: an HTTP GET, or with an API key the image's probe command (it sends the key). */}}
{{- define "sdserve.probe" -}}
{{- if .root.Values.apiKey.existingSecret }}
exec:
  command: ["/opt/sdserve/scripts/container-entrypoint.sh", "probe", {{ .route | quote }}]
timeoutSeconds: 10
{{- else }}
httpGet:
  path: {{ .route }}
  port: http
{{- end }}
periodSeconds: {{ .settings.periodSeconds }}
failureThreshold: {{ .settings.failureThreshold }}
{{- end -}}
