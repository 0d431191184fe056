{{- define "switchboard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "switchboard.fullname" -}}
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

{{- define "switchboard.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "switchboard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels; call with (dict "ctx" $ "component" "node"|"webtransport"). */}}
{{- define "switchboard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "switchboard.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "switchboard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "switchboard.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "switchboard.secretName" -}}
{{- default (include "switchboard.fullname" .) .Values.auth.existingSecret -}}
{{- end -}}

{{- define "switchboard.image" -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end -}}

{{/* Fail early on configurations that cannot work. */}}
{{- define "switchboard.validate" -}}
{{- $multi := or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled .Values.webtransport.split.enabled -}}
{{- if and $multi (not .Values.nats.url) -}}
{{- fail "nats.url is required with more than one node (replicaCount > 1, autoscaling or webtransport.split): nodes share rooms through NATS" -}}
{{- end -}}
{{- if and (not .Values.auth.existingSecret) (not .Values.auth.jwtSecret) (not .Values.auth.publicKey) (not .Values.auth.existingPublicKeySecret) -}}
{{- fail "set auth.jwtSecret, auth.existingSecret, auth.publicKey or auth.existingPublicKeySecret: without one, anyone could mint tokens" -}}
{{- end -}}
{{- if and .Values.auth.jwtSecret (lt (len .Values.auth.jwtSecret) 32) -}}
{{- fail "auth.jwtSecret must be at least 32 bytes" -}}
{{- end -}}
{{- if and .Values.tls.certManager.enabled (not .Values.tls.secretName) -}}
{{- fail "tls.certManager.enabled needs tls.secretName (the Secret cert-manager writes)" -}}
{{- end -}}
{{- end -}}

{{/*
The pod template of a node. Call with (dict "ctx" $ "component" "node"|"webtransport"
"command" list "resources" map "wt" bool "http" bool).
*/}}
{{- define "switchboard.podTemplate" -}}
{{- $ctx := .ctx -}}
{{- $v := $ctx.Values -}}
metadata:
  labels:
    {{- include "switchboard.selectorLabels" (dict "ctx" $ctx "component" .component) | nindent 4 }}
    {{- with $v.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    checksum/secret: {{ include (print $ctx.Template.BasePath "/secret.yaml") $ctx | sha256sum }}
    {{- if $v.prometheusAnnotations }}
    prometheus.io/scrape: "true"
    prometheus.io/port: {{ ternary "8080" "8081" .http | quote }}
    prometheus.io/path: /metrics
    {{- end }}
    {{- with $v.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "switchboard.serviceAccountName" $ctx }}
  {{- with $v.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  # Drain deadline plus the preStop pause plus slack: the node always finishes draining.
  terminationGracePeriodSeconds: {{ add (int $v.node.drainTimeout) 15 }}
  securityContext:
    runAsNonRoot: true
    runAsUser: 10001
    runAsGroup: 10001
    fsGroup: 10001
    seccompProfile:
      type: RuntimeDefault
  {{- if $v.topologySpreadConstraints.enabled }}
  topologySpreadConstraints:
    {{- range list "topology.kubernetes.io/zone" "kubernetes.io/hostname" }}
    - maxSkew: {{ $v.topologySpreadConstraints.maxSkew }}
      topologyKey: {{ . }}
      whenUnsatisfiable: {{ $v.topologySpreadConstraints.whenUnsatisfiable }}
      labelSelector:
        matchLabels:
          {{- include "switchboard.selectorLabels" (dict "ctx" $ctx "component" $.component) | nindent 10 }}
    {{- end }}
  {{- end }}
  containers:
    - name: {{ .component }}
      image: {{ include "switchboard.image" $ctx }}
      imagePullPolicy: {{ $v.image.pullPolicy }}
      command:
        {{- toYaml .command | nindent 8 }}
      ports:
        - name: http
          containerPort: {{ ternary 8080 8081 .http }}
          protocol: TCP
        {{- if .wt }}
        - name: quic
          containerPort: 4433
          protocol: UDP
        {{- end }}
      env:
        - name: SWITCHBOARD_NODE_ID
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        - name: SWITCHBOARD_HTTP_ADDR
          value: {{ printf "0.0.0.0:%s" (ternary "8080" "8081" .http) | quote }}
        - name: SWITCHBOARD_WT_ADDR
          value: "0.0.0.0:4433"
        {{- if not .wt }}
        - name: SWITCHBOARD_NO_WEBTRANSPORT
          value: "true"
        {{- end }}
        {{- with $v.nats.url }}
        - name: SWITCHBOARD_NATS_URL
          value: {{ . | quote }}
        {{- end }}
        {{- if $v.nats.credentialsSecret }}
        - name: SWITCHBOARD_NATS_CREDS
          value: /etc/switchboard/nats/{{ $v.nats.credentialsKey }}
        {{- end }}
        - name: SWITCHBOARD_NATS_REPLICAS
          value: {{ $v.nats.presenceReplicas | quote }}
        - name: SWITCHBOARD_SUBJECT_PREFIX
          value: {{ $v.nats.subjectPrefix | quote }}
        {{- if or $v.auth.publicKey $v.auth.existingPublicKeySecret }}
        - name: SWITCHBOARD_JWT_PUBLIC_KEY
          value: /etc/switchboard/jwt/public.pem
        - name: SWITCHBOARD_JWT_ALGORITHM
          value: {{ $v.auth.publicKeyAlgorithm | quote }}
        {{- else }}
        - name: SWITCHBOARD_JWT_SECRET
          valueFrom:
            secretKeyRef:
              name: {{ include "switchboard.secretName" $ctx }}
              key: {{ $v.auth.jwtSecretKey }}
        {{- end }}
        {{- if .http }}
        - name: SWITCHBOARD_ADMIN_KEY
          valueFrom:
            secretKeyRef:
              name: {{ include "switchboard.secretName" $ctx }}
              key: {{ $v.auth.adminKeyKey }}
              optional: true
        {{- end }}
        {{- if and .wt $v.tls.secretName }}
        - name: SWITCHBOARD_TLS_CERT
          value: /etc/switchboard/tls/tls.crt
        - name: SWITCHBOARD_TLS_KEY
          value: /etc/switchboard/tls/tls.key
        {{- end }}
        - name: SWITCHBOARD_DRAIN_TIMEOUT
          value: {{ $v.node.drainTimeout | quote }}
        - name: SWITCHBOARD_HEARTBEAT
          value: {{ $v.node.heartbeat | quote }}
        - name: SWITCHBOARD_NODE_TIMEOUT
          value: {{ $v.node.nodeTimeout | quote }}
        - name: SWITCHBOARD_REQUEST_RATE
          value: {{ $v.node.requestRate | quote }}
        - name: SWITCHBOARD_LOG_FORMAT
          value: {{ $v.node.logFormat | quote }}
        - name: RUST_LOG
          value: {{ $v.node.logLevel | quote }}
        {{- with $v.node.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      startupProbe:
        httpGet: {path: /healthz, port: http}
        periodSeconds: 2
        failureThreshold: 30
      livenessProbe:
        httpGet: {path: /healthz, port: http}
        periodSeconds: 10
        failureThreshold: 3
      readinessProbe:
        httpGet: {path: /readyz, port: http}
        periodSeconds: 2
        failureThreshold: 1
      lifecycle:
        preStop:
          # Give load balancers time to take the pod out before the node starts draining.
          exec:
            command: ["sleep", "5"]
      resources:
        {{- toYaml .resources | nindent 8 }}
      securityContext:
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        capabilities:
          drop: [ALL]
      volumeMounts:
        {{- if and .wt $v.tls.secretName }}
        - name: tls
          mountPath: /etc/switchboard/tls
          readOnly: true
        {{- end }}
        {{- if or $v.auth.publicKey $v.auth.existingPublicKeySecret }}
        - name: jwt
          mountPath: /etc/switchboard/jwt
          readOnly: true
        {{- end }}
        {{- if $v.nats.credentialsSecret }}
        - name: nats-creds
          mountPath: /etc/switchboard/nats
          readOnly: true
        {{- end }}
  volumes:
    {{- if and .wt $v.tls.secretName }}
    - name: tls
      secret:
        secretName: {{ $v.tls.secretName }}
    {{- end }}
    {{- if or $v.auth.publicKey $v.auth.existingPublicKeySecret }}
    - name: jwt
      secret:
        secretName: {{ default (printf "%s-jwt-public-key" (include "switchboard.fullname" $ctx)) $v.auth.existingPublicKeySecret }}
    {{- end }}
    {{- if $v.nats.credentialsSecret }}
    - name: nats-creds
      secret:
        secretName: {{ $v.nats.credentialsSecret }}
    {{- end }}
  {{- with $v.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
