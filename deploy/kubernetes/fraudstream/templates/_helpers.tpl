{{/*
Names and labels. Every object is named "<fullname>-<component>" and labelled with the
app.kubernetes.io/* recommended labels; app.kubernetes.io/component tells worker, api, train.
*/}}

{{- define "fraudstream.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "fraudstream.fullname" -}}
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

{{/* "<fullname>-<component>", within 63 characters. Call with (dict "root" $ "component" "worker"). */}}
{{- define "fraudstream.componentName" -}}
{{- $full := include "fraudstream.fullname" .root | trunc (int (sub 62 (len .component))) | trimSuffix "-" -}}
{{- printf "%s-%s" $full .component -}}
{{- end -}}

{{- define "fraudstream.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "fraudstream.labels" -}}
helm.sh/chart: {{ include "fraudstream.chart" . }}
{{ include "fraudstream.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: fraudstream
{{- end -}}

{{- define "fraudstream.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fraudstream.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of a component's objects. Call with (dict "root" $ "component" "worker"). */}}
{{- define "fraudstream.componentLabels" -}}
{{ include "fraudstream.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "fraudstream.componentSelectorLabels" -}}
{{ include "fraudstream.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "fraudstream.workerName" -}}
{{- include "fraudstream.componentName" (dict "root" . "component" "worker") -}}
{{- end -}}

{{- define "fraudstream.apiName" -}}
{{- include "fraudstream.componentName" (dict "root" . "component" "api") -}}
{{- end -}}

{{- define "fraudstream.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "fraudstream.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "fraudstream.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The PVC holding the model artifacts. */}}
{{- define "fraudstream.modelClaimName" -}}
{{- if .Values.model.existingClaim -}}
{{- .Values.model.existingClaim -}}
{{- else if .Values.model.persistence.enabled -}}
{{- include "fraudstream.componentName" (dict "root" . "component" "model") -}}
{{- else -}}
{{- fail "model: set model.existingClaim to a PVC holding the model, or model.persistence.enabled=true" -}}
{{- end -}}
{{- end -}}

{{- define "fraudstream.modelDir" -}}
{{- printf "%s/%s" (trimSuffix "/" .Values.model.mountPath) .Values.model.subPath -}}
{{- end -}}

{{/*
The worker's replica ceiling: a consumer beyond one per partition of the transactions topic gets
no partition and does no work.
*/}}
{{- define "fraudstream.kedaMaxReplicas" -}}
{{- min (int .Values.keda.maxReplicaCount) (int .Values.kafka.partitions) -}}
{{- end -}}

{{/* Settings every fraudstream process shares (streaming/settings.py KafkaSettings). */}}
{{- define "fraudstream.kafkaEnv" -}}
{{- $kafka := .Values.kafka -}}
- name: FRAUD_KAFKA_BOOTSTRAP_SERVERS
  value: {{ $kafka.bootstrapServers | quote }}
- name: FRAUD_KAFKA_SECURITY_PROTOCOL
  value: {{ $kafka.securityProtocol | quote }}
- name: FRAUD_TRANSACTIONS_TOPIC
  value: {{ $kafka.topics.transactions | quote }}
- name: FRAUD_DECISIONS_TOPIC
  value: {{ $kafka.topics.decisions | quote }}
- name: FRAUD_DLQ_TOPIC
  value: {{ $kafka.topics.dlq | quote }}
- name: FRAUD_LABELS_TOPIC
  value: {{ $kafka.topics.labels | quote }}
- name: FRAUD_LABELS_DLQ_TOPIC
  value: {{ $kafka.topics.labelsDlq | quote }}
- name: FRAUD_MERCHANT_RISK_TOPIC
  value: {{ $kafka.topics.merchantRisk | quote }}
- name: FRAUD_SHADOW_DECISIONS_TOPIC
  value: {{ $kafka.topics.shadowDecisions | quote }}
- name: FRAUD_RULES_TOPIC
  value: {{ $kafka.topics.rules | quote }}
- name: FRAUD_REVIEW_TOPIC
  value: {{ $kafka.topics.review | quote }}
- name: FRAUD_TOPIC_PARTITIONS
  value: {{ $kafka.partitions | quote }}
- name: FRAUD_TOPIC_REPLICATION_FACTOR
  value: {{ $kafka.replicationFactor | quote }}
{{- if hasPrefix "SASL" $kafka.securityProtocol }}
{{- if not $kafka.sasl.existingSecret }}
{{- fail "kafka.sasl.existingSecret is required with a SASL_* kafka.securityProtocol" }}
{{- end }}
- name: FRAUD_KAFKA_SASL_MECHANISM
  value: {{ $kafka.sasl.mechanism | quote }}
- name: FRAUD_KAFKA_SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ $kafka.sasl.existingSecret }}
      key: {{ $kafka.sasl.usernameKey }}
- name: FRAUD_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $kafka.sasl.existingSecret }}
      key: {{ $kafka.sasl.passwordKey }}
{{- end }}
{{- if and (hasSuffix "SSL" $kafka.securityProtocol) $kafka.tls.existingSecret }}
{{- range $env, $key := dict "FRAUD_KAFKA_SSL_CAFILE" $kafka.tls.caKey "FRAUD_KAFKA_SSL_CERTFILE" $kafka.tls.certKey "FRAUD_KAFKA_SSL_KEYFILE" $kafka.tls.keyKey }}
{{- if $key }}
- name: {{ $env }}
  value: {{ printf "/etc/fraudstream/kafka-tls/%s" $key | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Volume and mount of the Kafka TLS Secret, when there is one (empty otherwise). */}}
{{- define "fraudstream.kafkaTlsEnabled" -}}
{{- if and (hasSuffix "SSL" .Values.kafka.securityProtocol) .Values.kafka.tls.existingSecret -}}true{{- end -}}
{{- end -}}

{{- define "fraudstream.kafkaTlsVolume" -}}
{{- if include "fraudstream.kafkaTlsEnabled" . -}}
- name: kafka-tls
  secret:
    secretName: {{ .Values.kafka.tls.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{- define "fraudstream.kafkaTlsMount" -}}
{{- if include "fraudstream.kafkaTlsEnabled" . -}}
- name: kafka-tls
  mountPath: /etc/fraudstream/kafka-tls
  readOnly: true
{{- end }}
{{- end -}}

{{/* An HTTP probe. Call with (dict "path" "/ready" "port" "web" "probe" .Values.worker.readinessProbe). */}}
{{- define "fraudstream.httpProbe" -}}
httpGet:
  path: {{ .path }}
  port: {{ .port }}
initialDelaySeconds: {{ .probe.initialDelaySeconds }}
periodSeconds: {{ .probe.periodSeconds }}
timeoutSeconds: {{ .probe.timeoutSeconds }}
failureThreshold: {{ .probe.failureThreshold }}
{{- end -}}

{{/* The MLflow tracking URI, or "none" (`fraud train` records nothing; the root filesystem is
read-only, so the embedded store cannot be used). */}}
{{- define "fraudstream.trackingEnv" -}}
- name: FRAUD_MLFLOW_TRACKING_URI
  value: {{ .Values.mlflow.trackingUri | default "none" | quote }}
- name: FRAUD_REGISTERED_MODEL
  value: {{ .Values.mlflow.registeredModel | quote }}
{{- end -}}

{{/* What the worker and the API serve: a registry alias (model.uri) or the volume's directory. */}}
{{- define "fraudstream.modelEnv" -}}
- name: FRAUD_MODEL_DIR
  value: {{ include "fraudstream.modelDir" . | quote }}
{{- with .Values.model.uri }}
{{- if not $.Values.mlflow.trackingUri }}
{{- fail "model.uri needs mlflow.trackingUri (the registry the alias is in)" }}
{{- end }}
- name: FRAUD_MODEL_URI
  value: {{ . | quote }}
- name: FRAUD_MLFLOW_TRACKING_URI
  value: {{ $.Values.mlflow.trackingUri | quote }}
{{- end }}
{{- end -}}

{{/* FRAUD_STATE_TOKEN from stateToken.existingSecret, for the workers and the API. */}}
{{- define "fraudstream.stateTokenEnv" -}}
{{- if .Values.stateToken.existingSecret -}}
- name: FRAUD_STATE_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ .Values.stateToken.existingSecret }}
      key: {{ .Values.stateToken.key }}
{{- end }}
{{- end -}}

{{/* Egress every fraudstream pod needs: DNS, Kafka and (when given) the model registry. */}}
{{- define "fraudstream.egressCommon" -}}
{{- $np := .Values.networkPolicy -}}
# DNS, to the cluster's resolver.
- ports:
    {{- range $np.dnsPorts }}
    - port: {{ . }}
      protocol: UDP
    - port: {{ . }}
      protocol: TCP
    {{- end }}
# Kafka.
- ports:
    {{- range $np.kafka.ports }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
  {{- with $np.kafka.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- if $np.modelRegistry.ports }}
# The model registry.
- ports:
    {{- range $np.modelRegistry.ports }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
  {{- with $np.modelRegistry.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- end }}
