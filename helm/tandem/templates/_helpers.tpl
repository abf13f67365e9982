{{/* Names, labels and the derived settings every template shares. */}}

{{- define "tandem.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* <release>-tandem, or <release> when it already says tandem; at most 52 characters so that
the longest suffix ("-etcd-headless") keeps names within 63. */}}
{{- define "tandem.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "tandem.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tandem.commonLabels" -}}
helm.sh/chart: {{ include "tandem.chart" . }}
app.kubernetes.io/part-of: {{ include "tandem.name" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: call with (dict "ctx" $ "component" "node"). */}}
{{- define "tandem.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tandem.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "tandem.labels" -}}
{{ include "tandem.commonLabels" .ctx }}
{{ include "tandem.selectorLabels" . }}
{{- end -}}

{{- define "tandem.peersService" -}}
{{- printf "%s-peers" (include "tandem.fullname" .) -}}
{{- end -}}

{{- define "tandem.etcdFullname" -}}
{{- printf "%s-etcd" (include "tandem.fullname" .) -}}
{{- end -}}

{{- define "tandem.etcdHeadless" -}}
{{- printf "%s-etcd-headless" (include "tandem.fullname" .) -}}
{{- end -}}

{{- define "tandem.minioFullname" -}}
{{- printf "%s-minio" (include "tandem.fullname" .) -}}
{{- end -}}

{{- define "tandem.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tandem.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "tandem.clusterName" -}}
{{- default (include "tandem.fullname" .) .Values.clusterName -}}
{{- end -}}

{{- define "tandem.clusterSecretName" -}}
{{- default (printf "%s-cluster-secret" (include "tandem.fullname" .)) .Values.clusterSecret.existingSecret -}}
{{- end -}}

{{- define "tandem.adminPasswordSecretName" -}}
{{- default (printf "%s-admin-password" (include "tandem.fullname" .)) .Values.adminPassword.existingSecret -}}
{{- end -}}

{{/* HTTPS when the API serves a certificate. */}}
{{- define "tandem.httpScheme" -}}
{{- if .Values.tls.enabled -}}HTTPS{{- else -}}HTTP{{- end -}}
{{- end -}}

{{/* The etcd endpoints tandem connects to: every member of the bundled etcd, or the external ones. */}}
{{- define "tandem.etcdEndpoints" -}}
{{- if .Values.etcd.enabled -}}
{{- $endpoints := list -}}
{{- range $i := until (int .Values.etcd.replicaCount) -}}
{{- $endpoints = append $endpoints (printf "http://%s-%d.%s.%s.svc.%s:2379" (include "tandem.etcdFullname" $) $i (include "tandem.etcdHeadless" $) $.Release.Namespace $.Values.clusterDomain) -}}
{{- end -}}
{{- join "," $endpoints -}}
{{- else -}}
{{- join "," .Values.etcd.endpoints -}}
{{- end -}}
{{- end -}}

{{/* The bucket in use: objectStore.bucket, or "tandem" on the bundled MinIO. */}}
{{- define "tandem.bucket" -}}
{{- if .Values.objectStore.bucket -}}
{{- .Values.objectStore.bucket -}}
{{- else if .Values.minio.enabled -}}
tandem
{{- end -}}
{{- end -}}

{{/* The Secret and keys holding the S3 access keys ("" when the pod's identity is used). */}}
{{- define "tandem.s3SecretName" -}}
{{- if .Values.objectStore.existingSecret -}}
{{- .Values.objectStore.existingSecret -}}
{{- else if .Values.minio.enabled -}}
{{- printf "%s-credentials" (include "tandem.minioFullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "tandem.s3AccessKeyIdKey" -}}
{{- if .Values.objectStore.existingSecret -}}{{ .Values.objectStore.accessKeyIdKey }}{{- else -}}root-user{{- end -}}
{{- end -}}

{{- define "tandem.s3SecretAccessKeyKey" -}}
{{- if .Values.objectStore.existingSecret -}}{{ .Values.objectStore.secretAccessKeyKey }}{{- else -}}root-password{{- end -}}
{{- end -}}

{{- define "tandem.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Configurations that cannot work, refused at render time with what to change. */}}
{{- define "tandem.validate" -}}
{{- if and (not .Values.etcd.enabled) (empty .Values.etcd.endpoints) -}}
{{- fail "tandem needs etcd: set etcd.enabled=true (a bundled etcd) or etcd.endpoints to your etcd's client URLs" -}}
{{- end -}}
{{- if and .Values.etcd.enabled .Values.etcd.endpoints -}}
{{- fail "etcd.endpoints is for an external etcd: set etcd.enabled=false to use it, or leave it empty for the bundled etcd" -}}
{{- end -}}
{{- if and .Values.etcd.enabled .Values.etcd.tls.enabled -}}
{{- fail "etcd.tls is for an external etcd; the bundled etcd listens inside the namespace without TLS" -}}
{{- end -}}
{{- if and .Values.etcd.tls.enabled (not .Values.etcd.tls.existingSecret) -}}
{{- fail "etcd.tls.enabled needs etcd.tls.existingSecret: the Secret with the CA (and client certificate)" -}}
{{- end -}}
{{- if .Values.etcd.tls.enabled -}}
{{- range .Values.etcd.endpoints -}}
{{- if not (hasPrefix "https://" .) -}}
{{- fail (printf "etcd endpoint %s is not https:// but etcd.tls.enabled is true" .) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if le (int .Values.terminationGracePeriodSeconds) (int .Values.drain.timeoutSeconds) -}}
{{- fail "terminationGracePeriodSeconds must exceed drain.timeoutSeconds, or Kubernetes kills a node while it drains" -}}
{{- end -}}
{{- if and .Values.minio.enabled .Values.objectStore.endpoint -}}
{{- fail "minio.enabled runs its own endpoint: leave objectStore.endpoint empty, or turn minio off to use yours" -}}
{{- end -}}
{{- if and .Values.tls.enabled (not .Values.tls.existingSecret) -}}
{{- fail "tls.enabled needs tls.existingSecret: a Secret with tls.crt, tls.key and ca.crt (cert-manager's shape)" -}}
{{- end -}}
{{- if and .Values.interserverTls.enabled (not .Values.interserverTls.existingSecret) -}}
{{- fail "interserverTls.enabled needs interserverTls.existingSecret: a Secret with ca.crt, tls.crt and tls.key (cert-manager's shape)" -}}
{{- end -}}
{{- if and .Values.objectStore.bootstrapFromObjectStore (not (include "tandem.bucket" .)) -}}
{{- fail "objectStore.bootstrapFromObjectStore needs an object store: set objectStore.bucket (or minio.enabled)" -}}
{{- end -}}
{{- if and (not (kindIs "invalid" .Values.localStorageBytes)) (not (include "tandem.bucket" .)) -}}
{{- fail "localStorageBytes needs an object store (parts are evicted only once they are in the bucket): set objectStore.bucket (or minio.enabled)" -}}
{{- end -}}
{{- if and (not (kindIs "invalid" .Values.defaults.localReplicas)) (not (include "tandem.bucket" .)) -}}
{{- fail "defaults.localReplicas leaves parts on fewer nodes than all, the others reading them from the bucket: set objectStore.bucket (or minio.enabled)" -}}
{{- end -}}
{{- if and (gt (int .Values.queryNodes.replicaCount) 0) (not (include "tandem.bucket" .)) -}}
{{- fail "queryNodes read every part from the bucket: set objectStore.bucket (or minio.enabled), or queryNodes.replicaCount=0" -}}
{{- end -}}
{{- end -}}
