{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "switchboard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: release-chart, or the release name when it already contains the chart name. */}}
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

{{/* Common labels of every object. */}}
{{- define "switchboard.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "switchboard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: switchboard
{{- end -}}

{{/* Labels selecting every pod of the release (both components). */}}
{{- define "switchboard.releaseSelectorLabels" -}}
app.kubernetes.io/name: {{ include "switchboard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Selector labels of one component; call with (dict "ctx" $ "component" "node"|"webtransport"). */}}
{{- define "switchboard.selectorLabels" -}}
{{ include "switchboard.releaseSelectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "switchboard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "switchboard.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding the JWT secret and admin key (the chart's or auth.existingSecret). */}}
{{- define "switchboard.secretName" -}}
{{- default (include "switchboard.fullname" .) .Values.auth.existingSecret -}}
{{- end -}}

{{/* Whether the chart creates its own auth Secret. */}}
{{- define "switchboard.createSecret" -}}
{{- if and (not .Values.auth.existingSecret) (or .Values.auth.jwtSecret .Values.auth.adminKey) -}}true{{- end -}}
{{- end -}}

{{/* The webhook endpoints as SWITCHBOARD_WEBHOOKS: `url[ type,type]` joined by `;`. */}}
{{- define "switchboard.webhooks" -}}
{{- $parts := list -}}
{{- range .Values.webhooks.endpoints -}}
{{- if .events -}}
{{- $parts = append $parts (printf "%s %s" .url (join "," .events)) -}}
{{- else -}}
{{- $parts = append $parts .url -}}
{{- end -}}
{{- end -}}
{{- join ";" $parts -}}
{{- end -}}

{{/* The Secret holding the TURN shared secret. */}}
{{- define "switchboard.turnSecretName" -}}
{{- default (printf "%s-turn" (include "switchboard.fullname" .)) .Values.ice.existingSecret -}}
{{- end -}}

{{/* The Secret holding the webhook secret. */}}
{{- define "switchboard.webhookSecretName" -}}
{{- default (printf "%s-webhooks" (include "switchboard.fullname" .)) .Values.webhooks.existingSecret -}}
{{- end -}}

{{/* Whether tokens are verified with a public key. */}}
{{- define "switchboard.usePublicKey" -}}
{{- if or .Values.auth.publicKey .Values.auth.existingPublicKeySecret -}}true{{- end -}}
{{- end -}}

{{/* Whether a JWT secret is available (chart Secret or existing Secret). */}}
{{- define "switchboard.hasJwtSecret" -}}
{{- if or .Values.auth.existingSecret .Values.auth.jwtSecret -}}true{{- end -}}
{{- end -}}

{{- define "switchboard.image" -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end -}}

{{/* Combined nodes: replicaCount, or 2 with NATS and 1 without when it is null. */}}
{{- define "switchboard.replicas" -}}
{{- if kindIs "invalid" .Values.replicaCount -}}
{{- ternary 2 1 (not (empty .Values.nats.url)) -}}
{{- else -}}
{{- int .Values.replicaCount -}}
{{- end -}}
{{- end -}}

{{/* Fail early, with a clear message, on configurations that cannot work. */}}
{{- define "switchboard.validate" -}}
{{- $v := .Values -}}
{{- $replicas := int (include "switchboard.replicas" .) -}}
{{- if and (not $v.nats.url) (gt $replicas 1) -}}
{{- fail (printf "replicaCount is %d but nats.url is empty: several nodes share rooms only through NATS (>= 2.10 with JetStream). Set nats.url (e.g. nats://nats:4222) or replicaCount=1." $replicas) -}}
{{- end -}}
{{- if and (not $v.nats.url) $v.autoscaling.enabled -}}
{{- fail "autoscaling.enabled needs nats.url: several nodes share rooms only through NATS (>= 2.10 with JetStream)." -}}
{{- end -}}
{{- if and (not $v.nats.url) $v.webtransport.split.enabled -}}
{{- fail "webtransport.split.enabled needs nats.url: the WebTransport-only pods reach the combined nodes' rooms only through NATS (>= 2.10 with JetStream)." -}}
{{- end -}}
{{- if and (not (include "switchboard.hasJwtSecret" .)) (not (include "switchboard.usePublicKey" .)) (not $v.auth.allowDevelopmentSecret) -}}
{{- fail "no token key: set auth.jwtSecret (>= 32 bytes, e.g. $(openssl rand -hex 32)), auth.existingSecret, auth.publicKey or auth.existingPublicKeySecret. Without one, nodes use the public development secret and anyone can mint tokens (auth.allowDevelopmentSecret=true allows that for a throwaway test)." -}}
{{- end -}}
{{- if and $v.webhooks.endpoints (not $v.webhooks.existingSecret) (lt (len $v.webhooks.secret) 16) -}}
{{- fail "webhooks.endpoints needs webhooks.secret (at least 16 bytes, e.g. $(openssl rand -hex 32)) or webhooks.existingSecret: receivers verify every event's signature with it" -}}
{{- end -}}
{{- if and $v.ice.turnUrls (not $v.ice.existingSecret) (not $v.ice.turnSecret) -}}
{{- fail "ice.turnUrls needs ice.turnSecret (the TURN server's static-auth-secret) or ice.existingSecret: TURN credentials are derived from it" -}}
{{- end -}}
{{- if and $v.auth.jwtSecret (not $v.auth.existingSecret) (lt (len $v.auth.jwtSecret) 32) -}}
{{- fail "auth.jwtSecret must be at least 32 bytes" -}}
{{- end -}}
{{- if and $v.tls.certManager.enabled (not $v.tls.secretName) -}}
{{- fail "tls.certManager.enabled needs tls.secretName (the Secret cert-manager writes and the nodes mount)" -}}
{{- end -}}
{{- if and $v.tls.certManager.enabled (not $v.tls.certManager.issuerRef.name) -}}
{{- fail "tls.certManager.enabled needs tls.certManager.issuerRef.name" -}}
{{- end -}}
{{- if and $v.tls.certManager.enabled (not $v.tls.certManager.dnsNames) -}}
{{- fail "tls.certManager.enabled needs tls.certManager.dnsNames (the names clients connect to)" -}}
{{- end -}}
{{- if and $v.podDisruptionBudget.enabled (not (kindIs "invalid" $v.podDisruptionBudget.minAvailable)) (not (kindIs "invalid" $v.podDisruptionBudget.maxUnavailable)) -}}
{{- fail "podDisruptionBudget: set minAvailable or maxUnavailable, not both (set the other to null)" -}}
{{- end -}}
{{- if and $v.podDisruptionBudget.enabled (kindIs "invalid" $v.podDisruptionBudget.minAvailable) (kindIs "invalid" $v.podDisruptionBudget.maxUnavailable) -}}
{{- fail "podDisruptionBudget.enabled needs minAvailable or maxUnavailable" -}}
{{- end -}}
{{- range $what, $a := dict "autoscaling" $v.autoscaling "webtransport.split.autoscaling" $v.webtransport.split.autoscaling -}}
{{- if and $a.enabled (gt (int $a.minReplicas) (int $a.maxReplicas)) -}}
{{- fail (printf "%s.minReplicas (%d) is above maxReplicas (%d)" $what (int $a.minReplicas) (int $a.maxReplicas)) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The pod template of a node. Call with (dict "ctx" $ "component" "node"|"webtransport"
"command" list "resources" map "wt" bool "http" bool):
  wt    the pod serves WebTransport (UDP 4433)
  http  the pod is a combined node (`switchboard serve`, HTTP/WebSocket on 8080, admin API);
        otherwise a webtransport-server (probes and metrics on 8081)
*/}}
{{- define "switchboard.podTemplate" -}}
{{- $ctx := .ctx -}}
{{- $v := $ctx.Values -}}
{{- $httpPort := ternary 8080 8081 .http -}}
metadata:
  labels:
    {{- include "switchboard.selectorLabels" (dict "ctx" $ctx "component" .component) | nindent 4 }}
    app.kubernetes.io/version: {{ $ctx.Chart.AppVersion | quote }}
    {{- with $v.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    # Secret changes (JWT secret, admin key, public key) roll the pods.
    checksum/secret: {{ include (print $ctx.Template.BasePath "/secret.yaml") $ctx | sha256sum }}
    {{- if $v.prometheusAnnotations }}
    prometheus.io/scrape: "true"
    prometheus.io/port: {{ $httpPort | quote }}
    prometheus.io/path: /metrics
    {{- end }}
    {{- with $v.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "switchboard.serviceAccountName" $ctx }}
  automountServiceAccountToken: false
  # Keep Kubernetes' <SERVICE>_PORT variables out of the SWITCHBOARD_* namespace.
  enableServiceLinks: false
  {{- with $v.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  # Drain deadline + the 5 s preStop pause + 10 s of slack: Kubernetes never kills a draining node.
  terminationGracePeriodSeconds: {{ add (int $v.node.drainTimeout) 15 }}
  securityContext:
    runAsNonRoot: true
    runAsUser: 10001
    runAsGroup: 10001
    fsGroup: 10001
    seccompProfile:
      type: RuntimeDefault
  {{- if and $v.topologySpreadConstraints.enabled $v.topologySpreadConstraints.topologyKeys }}
  topologySpreadConstraints:
    {{- range $v.topologySpreadConstraints.topologyKeys }}
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
          containerPort: {{ $httpPort }}
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
          value: {{ printf "0.0.0.0:%d" $httpPort | quote }}
        - name: SWITCHBOARD_WT_ADDR
          value: "0.0.0.0:4433"
        - name: SWITCHBOARD_WT_MEDIA_LANES
          value: {{ ternary "on" "off" $v.webtransport.mediaLanes | quote }}
        - name: SWITCHBOARD_WT_CONGESTION
          value: {{ $v.webtransport.congestion | quote }}
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
          value: /etc/switchboard/nats/nats.creds
        {{- end }}
        - name: SWITCHBOARD_NATS_REPLICAS
          value: {{ $v.nats.presenceReplicas | quote }}
        - name: SWITCHBOARD_NATS_CONNECT_TIMEOUT
          value: {{ $v.nats.connectTimeout | quote }}
        - name: SWITCHBOARD_NATS_PING_INTERVAL
          value: {{ $v.nats.pingInterval | quote }}
        - name: SWITCHBOARD_SUBJECT_PREFIX
          value: {{ $v.nats.subjectPrefix | quote }}
        {{- if include "switchboard.usePublicKey" $ctx }}
        - name: SWITCHBOARD_JWT_PUBLIC_KEY
          value: /etc/switchboard/jwt/public.pem
        - name: SWITCHBOARD_JWT_ALGORITHM
          value: {{ $v.auth.publicKeyAlgorithm | quote }}
        {{- else if include "switchboard.hasJwtSecret" $ctx }}
        - name: SWITCHBOARD_JWT_SECRET
          valueFrom:
            secretKeyRef:
              name: {{ include "switchboard.secretName" $ctx }}
              key: {{ $v.auth.jwtSecretKey }}
        {{- end }}
        {{- if and .http (or $v.auth.existingSecret $v.auth.adminKey) }}
        - name: SWITCHBOARD_ADMIN_KEY
          valueFrom:
            secretKeyRef:
              name: {{ include "switchboard.secretName" $ctx }}
              key: {{ $v.auth.adminKeyKey }}
              optional: true
        {{- end }}
        {{- if $v.webhooks.endpoints }}
        - name: SWITCHBOARD_WEBHOOKS
          value: {{ include "switchboard.webhooks" $ctx | quote }}
        - name: SWITCHBOARD_WEBHOOK_SECRET
          valueFrom:
            secretKeyRef:
              name: {{ include "switchboard.webhookSecretName" $ctx }}
              key: {{ $v.webhooks.secretKey }}
        - name: SWITCHBOARD_WEBHOOK_RETRY_FOR
          value: {{ $v.webhooks.retryFor | quote }}
        - name: SWITCHBOARD_WEBHOOK_TIMEOUT
          value: {{ $v.webhooks.timeout | quote }}
        - name: SWITCHBOARD_WEBHOOK_QUEUE
          value: {{ $v.webhooks.queue | quote }}
        {{- end }}
        {{- if $v.ice.stunUrls }}
        - name: SWITCHBOARD_STUN_URLS
          value: {{ join "," $v.ice.stunUrls | quote }}
        {{- end }}
        {{- if $v.ice.turnUrls }}
        - name: SWITCHBOARD_TURN_URLS
          value: {{ join "," $v.ice.turnUrls | quote }}
        - name: SWITCHBOARD_TURN_SECRET
          valueFrom:
            secretKeyRef:
              name: {{ include "switchboard.turnSecretName" $ctx }}
              key: {{ $v.ice.secretKey }}
        - name: SWITCHBOARD_TURN_TTL
          value: {{ $v.ice.turnTtl | quote }}
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
        - name: SWITCHBOARD_CALL_INVITE_RATE
          value: {{ $v.node.callInviteRate | quote }}
        - name: SWITCHBOARD_MAX_ROOMS_PER_SESSION
          value: {{ $v.node.maxRoomsPerSession | quote }}
        - name: SWITCHBOARD_MAX_PENDING_CONNECTIONS
          value: {{ $v.node.maxPendingConnections | quote }}
        - name: SWITCHBOARD_MAX_PENDING_PER_IP
          value: {{ $v.node.maxPendingPerIp | quote }}
        - name: SWITCHBOARD_HELLO_TIMEOUT
          value: {{ $v.node.helloTimeout | quote }}
        {{- if and .http (not (kindIs "invalid" $v.node.httpWorkers)) }}
        - name: SWITCHBOARD_HTTP_WORKERS
          value: {{ $v.node.httpWorkers | quote }}
        {{- end }}
        - name: SWITCHBOARD_LOG_FORMAT
          value: {{ $v.node.logFormat | quote }}
        - name: RUST_LOG
          value: {{ $v.node.logLevel | quote }}
        {{- with $v.node.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      startupProbe:
        httpGet:
          path: /healthz
          port: http
        periodSeconds: 2
        failureThreshold: 30
      livenessProbe:
        httpGet:
          path: /healthz
          port: http
        periodSeconds: 10
        timeoutSeconds: 2
        failureThreshold: 3
      readinessProbe:
        httpGet:
          path: /readyz
          port: http
        periodSeconds: 2
        timeoutSeconds: 2
        failureThreshold: 2
      lifecycle:
        preStop:
          # Let endpoints and load balancers drop the pod before the node starts draining.
          exec:
            command: ["sleep", "5"]
      resources:
        {{- toYaml .resources | nindent 8 }}
      securityContext:
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        runAsNonRoot: true
        capabilities:
          drop: ["ALL"]
      {{- $mounts := or (and .wt $v.tls.secretName) (include "switchboard.usePublicKey" $ctx) $v.nats.credentialsSecret }}
      {{- if $mounts }}
      volumeMounts:
        {{- if and .wt $v.tls.secretName }}
        # A directory mount (no subPath), so renewed certificates appear in place; nodes re-read them.
        - name: tls
          mountPath: /etc/switchboard/tls
          readOnly: true
        {{- end }}
        {{- if include "switchboard.usePublicKey" $ctx }}
        - name: jwt
          mountPath: /etc/switchboard/jwt
          readOnly: true
        {{- end }}
        {{- if $v.nats.credentialsSecret }}
        - name: nats-creds
          mountPath: /etc/switchboard/nats
          readOnly: true
        {{- end }}
      {{- end }}
  {{- if $mounts }}
  volumes:
    {{- if and .wt $v.tls.secretName }}
    - name: tls
      secret:
        secretName: {{ $v.tls.secretName }}
    {{- end }}
    {{- if include "switchboard.usePublicKey" $ctx }}
    - name: jwt
      secret:
        {{- if $v.auth.existingPublicKeySecret }}
        secretName: {{ $v.auth.existingPublicKeySecret }}
        items:
          - key: {{ $v.auth.publicKeyKey }}
            path: public.pem
        {{- else }}
        secretName: {{ include "switchboard.fullname" $ctx }}-jwt-public-key
        {{- end }}
    {{- end }}
    {{- if $v.nats.credentialsSecret }}
    - name: nats-creds
      secret:
        secretName: {{ $v.nats.credentialsSecret }}
        items:
          - key: {{ $v.nats.credentialsKey }}
            path: nats.creds
    {{- end }}
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
