{{/*
Shared pieces of the four stage services. Each service file (training.yaml, ...) renders
"sigdl.stage" for its block of values when `<stage>.enabled` is true.
*/}}

{{/* The release's base name: the release name, or <release>-sigdl when it does not hold
"sigdl"; every object's name starts with it, so two releases in one namespace never collide. */}}
{{- define "sigdl.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else if contains "sigdl" .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-sigdl" .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end }}

{{/* A component's name: <fullname>-<component>, e.g. sigdl-training. */}}
{{- define "sigdl.name" -}}
{{- printf "%s-%s" (include "sigdl.fullname" .root) .component -}}
{{- end }}

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
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "sigdl.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
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
{{- with include "sigdl.s3Endpoint" .root }}
- name: SIGDL_S3_ENDPOINT
  value: {{ . | quote }}
- name: SIGDL_S3_SECURE
  value: {{ ternary "1" "0" $v.s3.secure | quote }}
- name: SIGDL_S3_REGION
  value: {{ $v.s3.region | quote }}
{{- end }}
{{- with include "sigdl.s3Secret" .root }}
- name: SIGDL_S3_ACCESS_KEY
  valueFrom:
    secretKeyRef: {name: {{ . | quote }}, key: {{ $v.s3.accessKeyKey | quote }}}
- name: SIGDL_S3_SECRET_KEY
  valueFrom:
    secretKeyRef: {name: {{ . | quote }}, key: {{ $v.s3.secretKeyKey | quote }}}
{{- end }}
{{- with include "sigdl.trackingUri" .root }}
- name: SIGDL_MLFLOW_TRACKING_URI
  value: {{ . | quote }}
{{- end }}
- name: SIGDL_MLFLOW_EXPERIMENT
  value: {{ $v.mlflow.experiment | quote }}
{{- with $v.jobStore.existingSecret }}
- name: SIGDL_JOB_STORE
  valueFrom:
    secretKeyRef: {name: {{ . | quote }}, key: {{ $v.jobStore.uriKey | quote }}}
- name: SIGDL_REPLICA_ID
  valueFrom:
    fieldRef: {fieldPath: metadata.name}
{{- end }}
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
{{- if and (eq .stage "training") .svc.trainJob.enabled }}
{{- if not .svc.trainJob.uri }}
{{- fail "training.trainJob.enabled needs training.trainJob.uri (an s3:// prefix every node reaches)" }}
{{- end }}
- name: SIGDL_TRAINING_BACKEND
  value: trainjob
- name: SIGDL_TRAINJOB_IMAGE
  value: {{ include "sigdl.image" .root | quote }}
- name: SIGDL_TRAINJOB_URI
  value: {{ .svc.trainJob.uri | quote }}
- name: SIGDL_TRAINJOB_NAMESPACE
  value: {{ .root.Release.Namespace | quote }}
- name: SIGDL_TRAINJOB_NODES
  value: {{ .svc.trainJob.nodes | quote }}
- name: SIGDL_TRAINJOB_GPUS_PER_NODE
  value: {{ .svc.trainJob.gpusPerNode | quote }}
- name: SIGDL_TRAINJOB_CPU
  value: {{ .svc.trainJob.cpu | quote }}
- name: SIGDL_TRAINJOB_MEMORY
  value: {{ .svc.trainJob.memory | quote }}
- name: SIGDL_TRAINJOB_RUNTIME
  value: {{ .svc.trainJob.runtime | quote }}
{{- with include "sigdl.s3Secret" .root }}
- name: SIGDL_TRAINJOB_S3_SECRET
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- if include "sigdl.kubernetesJobs" . }}
{{- if not $v.jobs.uri }}
{{- fail "jobs.backend kubernetes needs jobs.uri (an s3:// prefix the services and the Jobs reach)" }}
{{- end }}
- name: SIGDL_JOB_BACKEND
  value: kubernetes
- name: SIGDL_JOB_IMAGE
  value: {{ include "sigdl.image" .root | quote }}
- name: SIGDL_JOB_URI
  value: {{ $v.jobs.uri | quote }}
- name: SIGDL_JOB_NAMESPACE
  value: {{ .root.Release.Namespace | quote }}
- name: SIGDL_JOB_CPU
  value: {{ $v.jobs.cpu | quote }}
- name: SIGDL_JOB_MEMORY
  value: {{ $v.jobs.memory | quote }}
- name: SIGDL_JOB_GPUS
  value: {{ $v.jobs.gpus | quote }}
{{- with $v.jobs.nodeSelector }}
- name: SIGDL_JOB_NODE_SELECTOR
  value: {{ toJson . | quote }}
{{- end }}
{{- with $v.jobs.tolerations }}
- name: SIGDL_JOB_TOLERATIONS
  value: {{ toJson . | quote }}
{{- end }}
- name: SIGDL_JOB_BACKOFF_LIMIT
  value: {{ $v.jobs.backoffLimit | quote }}
- name: SIGDL_JOB_DEADLINE_S
  value: {{ $v.jobs.activeDeadlineSeconds | quote }}
- name: SIGDL_JOB_TTL_S
  value: {{ $v.jobs.ttlSecondsAfterFinished | quote }}
{{- with include "sigdl.s3Secret" .root }}
- name: SIGDL_JOB_S3_SECRET
  value: {{ . | quote }}
{{- end }}
{{- with $v.data.existingClaim }}
- name: SIGDL_JOB_DATA_CLAIM
  value: {{ . | quote }}
{{- end }}
{{- with $v.imagePullSecrets }}
{{- $names := list }}
{{- range . }}{{ $names = append $names .name }}{{ end }}
- name: SIGDL_JOB_PULL_SECRETS
  value: {{ join "," $names | quote }}
{{- end }}
{{- end }}
{{- range $name, $value := .svc.env }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end }}
{{/* "true" when the stage of this context runs its jobs as Kubernetes Jobs (jobs.backend;
sigdl/core/kubejob.py; the services services/grpc_common/jobservice.py lists in CLUSTER_JOBS). */}}
{{- define "sigdl.kubernetesJobs" -}}
{{- if and (has .stage (list "compression" "retest")) (eq .root.Values.jobs.backend "kubernetes") -}}
true
{{- end -}}
{{- end }}

{{/* Deployment, Service and (with persistence) a PersistentVolumeClaim of one stage. */}}
{{- define "sigdl.stage" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $svc := index $v .stage -}}
{{- $ctx := dict "root" $root "stage" .stage "svc" $svc -}}
{{- $name := include "sigdl.name" (dict "root" $root "component" .stage) -}}
{{- if and $v.tls.enabled (not $v.tls.secretName) }}
{{- fail "tls.enabled needs tls.secretName (a kubernetes.io/tls Secret)" }}
{{- end }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $name }}
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
      {{- if or (and (eq .stage "deploy") $v.deploy.rbac.create) (and (eq .stage "training") $v.training.trainJob.enabled) (include "sigdl.kubernetesJobs" $ctx) }}
      # its own account, bound to rbac.yaml's Role (deploy: rollout; training: TrainJobs;
      # compression, retest: Jobs)
      serviceAccountName: {{ $name }}
      automountServiceAccountToken: true
      {{- else }}
      serviceAccountName: {{ include "sigdl.serviceAccountName" $root }}
      automountServiceAccountToken: false
      {{- end }}
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
            {{- $resources := deepCopy $svc.resources }}
            {{- if $svc.gpu }}
            {{- $_ := set $resources "limits" (merge (dict "nvidia.com/gpu" $svc.gpu) ($resources.limits | default dict)) }}
            {{- end }}
            {{- toYaml $resources | nindent 12 }}
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
            claimName: {{ $name }}-home
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
  name: {{ $name }}
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
  name: {{ $name }}-home
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

{{/* Where the services find MLflow: the bundled server, or mlflow.trackingUri. */}}
{{- define "sigdl.trackingUri" -}}
{{- if .Values.mlflow.server.enabled -}}
{{- printf "http://%s.%s.svc:%d" (include "sigdl.name" (dict "root" . "component" "mlflow")) .Release.Namespace (int .Values.mlflow.server.port) -}}
{{- else -}}
{{- .Values.mlflow.trackingUri -}}
{{- end -}}
{{- end }}

{{/* The S3 endpoint: the bundled MinIO, or s3.endpoint. */}}
{{- define "sigdl.s3Endpoint" -}}
{{- if .Values.minio.enabled -}}
{{- printf "%s.%s.svc:%d" (include "sigdl.name" (dict "root" . "component" "minio")) .Release.Namespace (int .Values.minio.port) -}}
{{- else -}}
{{- .Values.s3.endpoint -}}
{{- end -}}
{{- end }}

{{/* The Secret with the S3 keys: s3.existingSecret (the bundled MinIO's root keys by default). */}}
{{- define "sigdl.s3Secret" -}}
{{- .Values.s3.existingSecret | default (and .Values.minio.enabled .Values.minio.existingSecret) | default "" -}}
{{- end }}

{{/* Pods of this release, and the pipeline's pods (labelled sigdl.io/client: "true", which
pipelines/cicd.py gives every component) in the namespaces networkPolicy.clientNamespaces
names: the only ones a NetworkPolicy lets in. */}}
{{- define "sigdl.allowedPeers" -}}
- podSelector:
    matchLabels:
      app.kubernetes.io/name: sigdl
      app.kubernetes.io/instance: {{ .Release.Name }}
- podSelector:
    matchLabels:
      sigdl.io/client: "true"
{{- range .Values.networkPolicy.clientNamespaces }}
- namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {{ . | quote }}
  podSelector:
    matchLabels:
      sigdl.io/client: "true"
{{- end }}
{{- end }}
