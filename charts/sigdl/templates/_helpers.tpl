{{/*
Shared pieces of the four stage services. Each service file (training.yaml, ...) renders
"sigdl.stage" for its block of values when `<stage>.enabled` is true.
*/}}

{{- define "sigdl.labels" -}}
app.kubernetes.io/name: sigdl
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- with .stage }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{- define "sigdl.selectorLabels" -}}
app.kubernetes.io/name: sigdl
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .stage }}
{{- end }}

{{- define "sigdl.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}{{ .Values.serviceAccount.name }}{{ else }}default{{ end }}
{{- end }}

{{- define "sigdl.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* A native gRPC probe on the service port; a TCP check when TLS is on (the kubelet's gRPC
probe cannot speak TLS). */}}
{{- define "sigdl.probe" -}}
{{- if .root.Values.tls.enabled -}}
tcpSocket:
  port: grpc
{{- else -}}
grpc:
  port: {{ .root.Values.port }}
{{- end }}
{{ toYaml .probe }}
{{- end }}

{{/* The SIGDL_* settings of one service (names as declared in sigdl/core/settings.py). */}}
{{- define "sigdl.env" -}}
{{- $v := .root.Values -}}
- name: SIGDL_HOME
  value: {{ $v.home | quote }}
- name: SIGDL_PROGRESS
  value: "0"
- name: SIGDL_OFFLINE
  value: {{ ternary "1" "0" $v.settings.offline | quote }}
- name: SIGDL_WORKERS
  value: {{ .svc.workers | quote }}
- name: SIGDL_QUEUE_SIZE
  value: {{ .svc.queueSize | quote }}
- name: SIGDL_MAX_MESSAGE_BYTES
  value: {{ $v.settings.maxMessageBytes | int64 | quote }}
- name: SIGDL_SHUTDOWN_GRACE_S
  value: {{ $v.settings.shutdownGraceS | quote }}
{{- with .svc.numThreads }}
- name: SIGDL_NUM_THREADS
  value: {{ . | quote }}
{{- end }}
{{- with $v.settings.artifactRoots }}
- name: SIGDL_ARTIFACT_ROOTS
  value: {{ . | quote }}
{{- end }}
{{- if $v.s3.endpoint }}
- name: SIGDL_S3_ENDPOINT
  value: {{ $v.s3.endpoint | quote }}
- name: SIGDL_S3_SECURE
  value: {{ ternary "1" "0" $v.s3.secure | quote }}
- name: SIGDL_S3_REGION
  value: {{ $v.s3.region | quote }}
{{- end }}
{{- with $v.s3.existingSecret }}
- name: SIGDL_S3_ACCESS_KEY
  valueFrom:
    secretKeyRef: {name: {{ . | quote }}, key: {{ $v.s3.accessKeyKey | quote }}}
- name: SIGDL_S3_SECRET_KEY
  valueFrom:
    secretKeyRef: {name: {{ . | quote }}, key: {{ $v.s3.secretKeyKey | quote }}}
{{- end }}
{{- with $v.mlflow.trackingUri }}
- name: SIGDL_MLFLOW_TRACKING_URI
  value: {{ . | quote }}
{{- end }}
- name: SIGDL_MLFLOW_EXPERIMENT
  value: {{ $v.mlflow.experiment | quote }}
{{- with $v.auth.existingSecret }}
- name: SIGDL_TOKEN
  valueFrom:
    secretKeyRef: {name: {{ . | quote }}, key: {{ $v.auth.tokenKey | quote }}}
{{- end }}
{{- if $v.tls.enabled }}
- name: SIGDL_TLS_CERT
  value: /etc/sigdl/tls/tls.crt
- name: SIGDL_TLS_KEY
  value: /etc/sigdl/tls/tls.key
{{- if $v.tls.mutual }}
- name: SIGDL_TLS_CA
  value: /etc/sigdl/tls/ca.crt
{{- end }}
{{- end }}
{{- if $v.data.existingClaim }}
- name: SIGDL_DATA
  value: {{ $v.data.mountPath | quote }}
{{- end }}
{{- range $name, $value := .svc.env }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end }}

{{/* Deployment, Service and (with persistence) a PersistentVolumeClaim of one stage. */}}
{{- define "sigdl.stage" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $svc := index $v .stage -}}
{{- $ctx := dict "root" $root "stage" .stage "svc" $svc -}}
{{- if and $v.tls.enabled (not $v.tls.secretName) }}
{{- fail "tls.enabled needs tls.secretName (a kubernetes.io/tls Secret)" }}
{{- end }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $svc.name }}
  labels:
    {{- include "sigdl.labels" $ctx | nindent 4 }}
spec:
  replicas: {{ $svc.replicas }}
  {{- if $v.persistence.enabled }}
  strategy:
    type: Recreate  # the new pod needs the old one's ReadWriteOnce volume
  {{- end }}
  selector:
    matchLabels:
      {{- include "sigdl.selectorLabels" $ctx | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "sigdl.labels" $ctx | nindent 8 }}
    spec:
      serviceAccountName: {{ include "sigdl.serviceAccountName" $root }}
      automountServiceAccountToken: false
      # SIGTERM: running jobs get SIGDL_SHUTDOWN_GRACE_S to finish, then are failed retryable
      terminationGracePeriodSeconds: {{ add (int $v.settings.shutdownGraceS) 10 }}
      securityContext:
        {{- toYaml $v.podSecurityContext | nindent 8 }}
      {{- with $v.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        - name: server
          image: {{ include "sigdl.image" $root | quote }}
          imagePullPolicy: {{ $v.image.pullPolicy }}
          args: ["serve", {{ .stage | quote }}, "--host", {{ $v.host | quote }}, "--port", {{ $v.port | quote }}]
          ports:
            - name: grpc
              containerPort: {{ $v.port }}
              protocol: TCP
          env:
            {{- include "sigdl.env" $ctx | nindent 12 }}
          readinessProbe:
            {{- include "sigdl.probe" (dict "root" $root "probe" $v.probes.readiness) | nindent 12 }}
          livenessProbe:
            {{- include "sigdl.probe" (dict "root" $root "probe" $v.probes.liveness) | nindent 12 }}
          resources:
            {{- toYaml $svc.resources | nindent 12 }}
          securityContext:
            {{- toYaml $v.securityContext | nindent 12 }}
          volumeMounts:
            - name: home
              mountPath: {{ $v.home }}
            - name: tmp
              mountPath: /tmp
            {{- if $v.tls.enabled }}
            - name: tls
              mountPath: /etc/sigdl/tls
              readOnly: true
            {{- end }}
            {{- if $v.data.existingClaim }}
            - name: data
              mountPath: {{ $v.data.mountPath }}
              readOnly: true
            {{- end }}
      volumes:
        - name: home
          {{- if $v.persistence.enabled }}
          persistentVolumeClaim:
            claimName: {{ $svc.name }}-home
          {{- else }}
          emptyDir: {}
          {{- end }}
        - name: tmp
          emptyDir: {}
        {{- if $v.tls.enabled }}
        - name: tls
          secret:
            secretName: {{ $v.tls.secretName }}
        {{- end }}
        {{- if $v.data.existingClaim }}
        - name: data
          persistentVolumeClaim:
            claimName: {{ $v.data.existingClaim }}
            readOnly: true
        {{- end }}
      {{- with $svc.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $svc.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $svc.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ $svc.name }}
  labels:
    {{- include "sigdl.labels" $ctx | nindent 4 }}
spec:
  type: ClusterIP
  selector:
    {{- include "sigdl.selectorLabels" $ctx | nindent 4 }}
  ports:
    - name: grpc
      port: {{ $v.port }}
      targetPort: grpc
      protocol: TCP
      appProtocol: grpc
{{- if $v.persistence.enabled }}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: {{ $svc.name }}-home
  labels:
    {{- include "sigdl.labels" $ctx | nindent 4 }}
spec:
  accessModes:
    {{- toYaml $v.persistence.accessModes | nindent 4 }}
  {{- with $v.persistence.storageClass }}
  storageClassName: {{ . }}
  {{- end }}
  resources:
    requests:
      storage: {{ $v.persistence.size }}
{{- end }}
{{- end }}
