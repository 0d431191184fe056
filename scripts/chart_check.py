#!/usr/bin/env python3
"""Offline verification of the Helm chart in helm/switchboard (run by scripts/check-chart.sh).

* Helm's own Go library, through PyPI's helm-python-sdk (module ``helm_python``; no helm
  binary, no cluster): ``helm_python.lint`` (strict, with a target Kubernetes version) and
  ``helm_python.Chart.load(...).render(...)`` (which also enforces values.schema.json).
* Every value set in helm/switchboard/ci/*.yaml must lint clean and render; every rendered
  manifest is validated offline, strictly (unknown fields are errors), against the
  Kubernetes OpenAPI schemas shipped by PyPI's kubernetes-validate, for the oldest and the
  newest Kubernetes version the chart targets. Custom resources it has no schema for
  (ServiceMonitor, Certificate) are skipped and reported.
* Semantic facts the product relies on are asserted on the rendered objects (grace period =
  drain timeout + 15, probes, security context, UDP service, selectors that match, ...).
* Every value set in helm/switchboard/ci-fail/*.yaml must be refused, with the message its
  ``# expect: ...`` line names (e.g. three replicas without NATS).
* values.yaml, values.schema.json and README.md must agree: every value is commented, typed
  and documented.

Ends with the plain line ``N passed, M failed``; exits 1 when anything failed.
"""

from __future__ import annotations

import json
import pathlib
import re
import sys
import time

import helm_python
import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "switchboard"
KUBE_VERSIONS = ["1.30.0", "1.37.0"]  # oldest supported target, newest schemas shipped
RELEASE, NAMESPACE = "rt", "realtime"
# Custom resources: kubernetes-validate ships no schema for them.
CRD_KINDS = {
    "ServiceMonitor": "monitoring.coreos.com/v1",
    "PrometheusRule": "monitoring.coreos.com/v1",
    "Certificate": "cert-manager.io/v1",
}
DASHBOARD = CHART / "files" / "grafana-dashboard.json"
RULES = CHART / "files" / "prometheus-rules.yaml"
# What the dashboard and the alerts must cover (the list), by panel title and alert name.
DASHBOARD_PANELS = [
    "Ready", "Draining", "NATS connection", "Connections by transport", "Connections against the caps", "Joins",
    "Deliveries", "Delivery latency", "Drops by class", "Slow consumers", "Errors by code", "Certificate lifetime left",
    "Webhooks",
]
ALERTS = [
    "SwitchboardNodeNotReady", "SwitchboardNatsDisconnected", "SwitchboardSlowConsumersHigh", "SwitchboardErrorRateHigh",
    "SwitchboardInternalErrors", "SwitchboardReliableDataDropped", "SwitchboardConnectionsNearLimit",
    "SwitchboardCertificateExpiring", "SwitchboardWebhooksDropped",
]
# Fields of a PrometheusRule (monitoring.coreos.com/v1) the chart may set; anything else is a typo.
RULE_GROUP_FIELDS = {"name", "interval", "rules", "limit", "partial_response_strategy", "query_offset", "labels"}
RULE_FIELDS = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
PROM_DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")

passed = failed = 0


def check(ok: object, what: str) -> bool:
    global passed, failed
    if ok:
        passed += 1
    else:
        failed += 1
        print(f"FAIL: {what}")
    return bool(ok)


def get(d: dict, path: str, default=None):
    for part in path.split("."):
        if not isinstance(d, dict) or part not in d:
            return default
        d = d[part]
    return d


def manifests(rendered: dict[str, str]) -> list[tuple[str, dict]]:
    out = []
    for path, text in sorted(rendered.items()):
        if not path.endswith(".yaml"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                out.append((path.split("/")[-1], doc))
    return out


def matches(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# --------------------------------------------------------------------------- semantics


def check_deployments(name: str, docs: list[tuple[str, dict]], v: dict, secrets: dict) -> None:
    deployments = {d["metadata"]["name"]: d for _, d in docs if d["kind"] == "Deployment"}
    split = get(v, "webtransport.split.enabled")
    check(len(deployments) == (2 if split else 1), f"{name}: {2 if split else 1} Deployment(s), got {list(deployments)}")
    drain = int(get(v, "node.drainTimeout"))
    nats_url = get(v, "nats.url") or ""
    for dname, d in deployments.items():
        who = f"{name}: Deployment {dname}"
        tpl = d["spec"]["template"]
        spec = tpl["spec"]
        component = tpl["metadata"]["labels"].get("app.kubernetes.io/component")
        combined = component == "node"
        check(matches(d["spec"]["selector"]["matchLabels"], tpl["metadata"]["labels"]), f"{who}: selector matches its pods")
        check(spec.get("terminationGracePeriodSeconds") == drain + 15, f"{who}: terminationGracePeriodSeconds == drainTimeout + 15 ({drain + 15})")
        check("checksum/secret" in (tpl["metadata"].get("annotations") or {}), f"{who}: checksum/secret pod annotation")
        check(spec.get("automountServiceAccountToken") is False, f"{who}: no service-account token")
        psc = spec.get("securityContext") or {}
        check(psc.get("runAsNonRoot") is True, f"{who}: runAsNonRoot")
        check(psc.get("runAsUser") == 10001, f"{who}: runAsUser 10001")
        check(psc.get("fsGroup") == 10001, f"{who}: fsGroup")
        check(get(psc, "seccompProfile.type") == "RuntimeDefault", f"{who}: seccomp RuntimeDefault")
        tsc = spec.get("topologySpreadConstraints") or []
        if get(v, "topologySpreadConstraints.enabled"):
            check([c["topologyKey"] for c in tsc] == get(v, "topologySpreadConstraints.topologyKeys"), f"{who}: spread over the topology keys")
            check(all(matches(c["labelSelector"]["matchLabels"], tpl["metadata"]["labels"]) for c in tsc), f"{who}: spread constraints select its own pods")
        else:
            check(not tsc, f"{who}: no spread constraints when disabled")
        if get(v, "autoscaling.enabled" if combined else "webtransport.split.autoscaling.enabled"):
            check("replicas" not in d["spec"], f"{who}: replicas left to the HPA")
        else:
            want = int(get(v, "replicaCount", 2 if nats_url else 1)) if combined else int(get(v, "webtransport.split.replicaCount"))
            check(d["spec"].get("replicas") == want, f"{who}: replicas == {want}")
        check(d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0, f"{who}: rolling update keeps capacity")
        volumes = {vol["name"]: vol for vol in spec.get("volumes") or []}
        check(len(spec["containers"]) == 1, f"{who}: one container")
        for c in spec["containers"]:
            csc = c.get("securityContext") or {}
            check(csc.get("readOnlyRootFilesystem") is True, f"{who}: readOnlyRootFilesystem")
            check(csc.get("allowPrivilegeEscalation") is False, f"{who}: allowPrivilegeEscalation false")
            check(get(csc, "capabilities.drop") == ["ALL"], f"{who}: capabilities drop ALL")
            check(get(c, "readinessProbe.httpGet.path") == "/readyz", f"{who}: readiness probe GET /readyz")
            check(get(c, "livenessProbe.httpGet.path") == "/healthz", f"{who}: liveness probe GET /healthz")
            check(get(c, "startupProbe.httpGet.path") == "/healthz" and get(c, "startupProbe.failureThreshold", 0) >= 30, f"{who}: startup probe GET /healthz, failureThreshold >= 30")
            check(get(c, "lifecycle.preStop.exec.command") == ["sleep", "5"], f"{who}: preStop sleep 5")
            check(get(c, "resources.requests.cpu") and get(c, "resources.limits.memory"), f"{who}: cpu request and memory limit")
            tag = get(v, "image.tag") or "0.1.0"
            check(c["image"] == f"{get(v, 'image.repository')}:{tag}", f"{who}: image {c['image']}")
            ports = {p["name"]: p for p in c.get("ports") or []}
            env = {e["name"]: e for e in c.get("env") or []}
            val = lambda k: (env.get(k) or {}).get("value")  # noqa: E731
            check(get(env, "SWITCHBOARD_NODE_ID.valueFrom.fieldRef.fieldPath") == "metadata.name", f"{who}: node id from the pod name")
            check(val("SWITCHBOARD_DRAIN_TIMEOUT") == str(drain), f"{who}: SWITCHBOARD_DRAIN_TIMEOUT == {drain}")
            check(val("SWITCHBOARD_LOG_FORMAT") == get(v, "node.logFormat"), f"{who}: log format")
            check(val("RUST_LOG") == get(v, "node.logLevel"), f"{who}: RUST_LOG")
            check(val("SWITCHBOARD_NATS_URL") == (nats_url or None), f"{who}: SWITCHBOARD_NATS_URL")
            check(val("SWITCHBOARD_NATS_REPLICAS") == str(get(v, "nats.presenceReplicas")), f"{who}: presence replicas")
            if combined:
                check(c["command"] == ["/usr/local/bin/switchboard", "serve"], f"{who}: runs switchboard serve")
                check(val("SWITCHBOARD_HTTP_ADDR") == "0.0.0.0:8080" and get(ports, "http.containerPort") == 8080, f"{who}: HTTP on 8080")
                check((val("SWITCHBOARD_NO_WEBTRANSPORT") == "true") == bool(split), f"{who}: --no-webtransport iff split")
                check(("quic" in ports) != bool(split), f"{who}: QUIC port iff not split")
            else:
                check(c["command"] == ["/usr/local/bin/webtransport-server"], f"{who}: runs webtransport-server")
                check(val("SWITCHBOARD_HTTP_ADDR") == "0.0.0.0:8081" and get(ports, "http.containerPort") == 8081, f"{who}: probes on 8081")
                check("SWITCHBOARD_NO_WEBTRANSPORT" not in env and "SWITCHBOARD_ADMIN_KEY" not in env, f"{who}: WebTransport on, no admin API")
            if "quic" in ports:
                check(ports["quic"]["protocol"] == "UDP" and ports["quic"]["containerPort"] == 4433, f"{who}: QUIC on 4433/UDP")
                check(val("SWITCHBOARD_WT_ADDR") == "0.0.0.0:4433", f"{who}: SWITCHBOARD_WT_ADDR")
            if nats_url == "" and combined:
                check(d["spec"].get("replicas") == 1, f"{who}: a single node without NATS")
            # Files: each path the node reads is on a mounted volume from the right Secret.
            mounts = {m["mountPath"]: m for m in c.get("volumeMounts") or []}

            def mounted(path_env: str, secret: str, key: str | None = None) -> None:
                path = val(path_env)
                directory, _, filename = (path or "").rpartition("/")
                m = mounts.get(directory)
                vol = volumes.get(m["name"]) if m else None
                ok = bool(m and m.get("readOnly") and vol and get(vol, "secret.secretName") == secret)
                if ok and key is not None:
                    ok = {"key": key, "path": filename} in (get(vol, "secret.items") or [])
                check(ok, f"{who}: {path_env}={path} is mounted read-only from Secret {secret}")

            if get(v, "nats.credentialsSecret"):
                mounted("SWITCHBOARD_NATS_CREDS", get(v, "nats.credentialsSecret"), get(v, "nats.credentialsKey"))
            else:
                check("SWITCHBOARD_NATS_CREDS" not in env, f"{who}: no NATS credentials")
            wt = "quic" in ports
            if wt and get(v, "tls.secretName"):
                mounted("SWITCHBOARD_TLS_CERT", get(v, "tls.secretName"))
                mounted("SWITCHBOARD_TLS_KEY", get(v, "tls.secretName"))
            else:
                check("SWITCHBOARD_TLS_CERT" not in env and "SWITCHBOARD_TLS_KEY" not in env, f"{who}: no certificate paths")
            public = get(v, "auth.existingPublicKeySecret") or get(v, "auth.publicKey")
            if public:
                secret = get(v, "auth.existingPublicKeySecret") or f"{RELEASE}-switchboard-jwt-public-key"
                mounted("SWITCHBOARD_JWT_PUBLIC_KEY", secret, get(v, "auth.publicKeyKey") if get(v, "auth.existingPublicKeySecret") else None)
                check(val("SWITCHBOARD_JWT_ALGORITHM") == get(v, "auth.publicKeyAlgorithm"), f"{who}: JWT algorithm")
                check("SWITCHBOARD_JWT_SECRET" not in env, f"{who}: no JWT secret with a public key")
            elif get(v, "auth.jwtSecret") or get(v, "auth.existingSecret"):
                ref = get(env, "SWITCHBOARD_JWT_SECRET.valueFrom.secretKeyRef") or {}
                check(ref.get("key") == get(v, "auth.jwtSecretKey") and not ref.get("optional"), f"{who}: SWITCHBOARD_JWT_SECRET from a Secret")
            else:
                check("SWITCHBOARD_JWT_SECRET" not in env and get(v, "auth.allowDevelopmentSecret"), f"{who}: development secret only when allowed")
            if combined and (get(v, "auth.adminKey") or get(v, "auth.existingSecret")):
                ref = get(env, "SWITCHBOARD_ADMIN_KEY.valueFrom.secretKeyRef") or {}
                check(ref.get("key") == get(v, "auth.adminKeyKey"), f"{who}: SWITCHBOARD_ADMIN_KEY from the Secret")
            # Webhooks: every node delivers, with the endpoints and the secret from a Secret.
            endpoints = get(v, "webhooks.endpoints") or []
            if endpoints:
                specs = [e["url"] + (" " + ",".join(e["events"]) if e.get("events") else "") for e in endpoints]
                check(val("SWITCHBOARD_WEBHOOKS") == ";".join(specs), f"{who}: SWITCHBOARD_WEBHOOKS lists the endpoints")
                ref = get(env, "SWITCHBOARD_WEBHOOK_SECRET.valueFrom.secretKeyRef") or {}
                secret = get(v, "webhooks.existingSecret") or f"{RELEASE}-switchboard-webhooks"
                check(ref.get("name") == secret and ref.get("key") == get(v, "webhooks.secretKey"), f"{who}: SWITCHBOARD_WEBHOOK_SECRET from its Secret")
                check(val("SWITCHBOARD_WEBHOOK_RETRY_FOR") == str(get(v, "webhooks.retryFor")), f"{who}: webhook retry time")
            else:
                check("SWITCHBOARD_WEBHOOKS" not in env, f"{who}: no webhooks unless configured")
            # ICE servers: STUN and TURN URLs, the TURN secret from a Secret, the credential TTL.
            stun, turn_urls = get(v, "ice.stunUrls") or [], get(v, "ice.turnUrls") or []
            check(val("SWITCHBOARD_STUN_URLS") == (",".join(stun) or None), f"{who}: SWITCHBOARD_STUN_URLS lists ice.stunUrls")
            if turn_urls:
                check(val("SWITCHBOARD_TURN_URLS") == ",".join(turn_urls), f"{who}: SWITCHBOARD_TURN_URLS lists ice.turnUrls")
                ref = get(env, "SWITCHBOARD_TURN_SECRET.valueFrom.secretKeyRef") or {}
                secret = get(v, "ice.existingSecret") or f"{RELEASE}-switchboard-turn"
                check(ref.get("name") == secret and ref.get("key") == get(v, "ice.secretKey") and not ref.get("optional"), f"{who}: SWITCHBOARD_TURN_SECRET from its Secret")
                check(val("SWITCHBOARD_TURN_TTL") == str(get(v, "ice.turnTtl")), f"{who}: TURN credential TTL")
            else:
                check(not any(k.startswith("SWITCHBOARD_TURN_") for k in env), f"{who}: no TURN settings unless configured")
            # Every secretKeyRef to a chart-made Secret names a key the Secret has.
            for e in env.values():
                ref = get(e, "valueFrom.secretKeyRef")
                if ref and ref["name"] in secrets and not ref.get("optional"):
                    check(ref["key"] in (secrets[ref["name"]].get("data") or {}), f"{who}: {e['name']} key {ref['key']} exists in Secret {ref['name']}")
            for m in mounts.values():
                check(m["name"] in volumes, f"{who}: volume {m['name']} exists")


def check_services(name: str, docs: list[tuple[str, dict]], v: dict) -> None:
    pods = [d["spec"]["template"] for _, d in docs if d["kind"] == "Deployment"]
    services = [d for _, d in docs if d["kind"] == "Service"]
    for s in services:
        sname = s["metadata"]["name"]
        selected = [p for p in pods if matches(s["spec"]["selector"], p["metadata"]["labels"])]
        check(selected, f"{name}: Service {sname} selects pods")
        for port in s["spec"]["ports"]:
            ok = all(
                any(cp["name"] == port["targetPort"] and cp["protocol"] == port["protocol"] for c in p["spec"]["containers"] for cp in c.get("ports", []))
                for p in selected
            )
            check(ok, f"{name}: Service {sname} port {port['name']} targets a {port['protocol']} container port {port['targetPort']}")
    http = [s for s in services if s["metadata"]["name"] == f"{RELEASE}-switchboard"]
    check(
        len(http) == 1 and http[0]["spec"]["type"] == get(v, "service.type")
        and http[0]["spec"]["ports"] == [{"name": "http", "port": get(v, "service.port"), "targetPort": "http", "protocol": "TCP"}],
        f"{name}: HTTP/WebSocket Service, TCP port named http",
    )
    udp = [s for s in services if any(p["protocol"] == "UDP" for p in s["spec"]["ports"])]
    if check(len(udp) == 1, f"{name}: exactly one UDP Service"):
        u = udp[0]
        check(u["metadata"]["name"] == f"{RELEASE}-switchboard-quic", f"{name}: UDP Service named -quic")
        check(u["spec"]["type"] == get(v, "udpService.type"), f"{name}: UDP Service type {get(v, 'udpService.type')}")
        check(all(p["protocol"] == "UDP" for p in u["spec"]["ports"]) and u["spec"]["ports"][0]["port"] == get(v, "udpService.port"), f"{name}: UDP Service protocol UDP")
        want_etp = None if get(v, "udpService.type") == "ClusterIP" else get(v, "udpService.externalTrafficPolicy")
        check(u["spec"].get("externalTrafficPolicy") == want_etp, f"{name}: externalTrafficPolicy {want_etp}")
        if get(v, "udpService.type") == "NodePort" and get(v, "udpService.nodePort") is not None:
            check(u["spec"]["ports"][0].get("nodePort") == get(v, "udpService.nodePort"), f"{name}: fixed nodePort")
        want = "webtransport" if get(v, "webtransport.split.enabled") else "node"
        check(u["spec"]["selector"].get("app.kubernetes.io/component") == want, f"{name}: UDP Service selects the {want} pods")


def check_others(name: str, docs: list[tuple[str, dict]], v: dict, notes: str) -> None:
    by_kind: dict[str, list[dict]] = {}
    for _, d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    deployments = {d["metadata"]["name"]: d for d in by_kind.get("Deployment", [])}
    split = get(v, "webtransport.split.enabled")

    hpas = by_kind.get("HorizontalPodAutoscaler", [])
    want = [c for c, a in (("node", "autoscaling"), ("webtransport", "webtransport.split.autoscaling")) if get(v, f"{a}.enabled") and (c == "node" or split)]
    check(len(hpas) == len(want), f"{name}: {len(want)} HPA(s)")
    for h in hpas:
        target = h["spec"]["scaleTargetRef"]
        check(target["kind"] == "Deployment" and target["name"] in deployments, f"{name}: HPA {h['metadata']['name']} targets a rendered Deployment")
        comp = deployments.get(target["name"], {}).get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {}).get("app.kubernetes.io/component")
        cfg = get(v, "autoscaling" if comp == "node" else "webtransport.split.autoscaling") or {}
        names = [m["resource"]["name"] for m in h["spec"]["metrics"]]
        check(names == (["cpu", "memory"] if cfg.get("targetMemoryUtilizationPercentage") is not None else ["cpu"]), f"{name}: HPA metrics {names}")
        check((h["spec"]["minReplicas"], h["spec"]["maxReplicas"]) == (cfg.get("minReplicas"), cfg.get("maxReplicas")), f"{name}: HPA bounds")

    pdbs = by_kind.get("PodDisruptionBudget", [])
    if get(v, "podDisruptionBudget.enabled"):
        check(len(pdbs) == len(deployments), f"{name}: one PDB per Deployment")
        for p in pdbs:
            check(any(matches(p["spec"]["selector"]["matchLabels"], d["spec"]["template"]["metadata"]["labels"]) for d in deployments.values()), f"{name}: PDB {p['metadata']['name']} selects pods")
            check(("minAvailable" in p["spec"]) != ("maxUnavailable" in p["spec"]), f"{name}: PDB sets exactly one of minAvailable/maxUnavailable")
    else:
        check(not pdbs, f"{name}: no PDB when disabled")

    ingresses = by_kind.get("Ingress", [])
    check(len(ingresses) == (1 if get(v, "ingress.enabled") else 0), f"{name}: Ingress iff ingress.enabled")
    for i in ingresses:
        ann = i["metadata"].get("annotations") or {}
        check(ann.get("nginx.ingress.kubernetes.io/proxy-read-timeout") == "3600" and ann.get("nginx.ingress.kubernetes.io/proxy-send-timeout") == "3600", f"{name}: Ingress keeps WebSockets open (3600 s)")
        for rule in i["spec"]["rules"]:
            for p in rule["http"]["paths"]:
                check(p["backend"]["service"] == {"name": f"{RELEASE}-switchboard", "port": {"name": "http"}}, f"{name}: Ingress routes to the HTTP Service")

    monitors = by_kind.get("ServiceMonitor", [])
    check(len(monitors) == (1 if get(v, "serviceMonitor.enabled") else 0), f"{name}: ServiceMonitor iff serviceMonitor.enabled")
    for m in monitors:
        check(m["apiVersion"] == CRD_KINDS["ServiceMonitor"], f"{name}: ServiceMonitor apiVersion")
        scraped = [s for s in by_kind.get("Service", []) if matches(m["spec"]["selector"]["matchLabels"], s["metadata"]["labels"]) and any(p["name"] == "http" for p in s["spec"]["ports"])]
        check(len(scraped) == (2 if split else 1), f"{name}: ServiceMonitor scrapes {2 if split else 1} Service(s) with an http port")
        check(m["spec"]["endpoints"][0]["path"] == "/metrics", f"{name}: ServiceMonitor path /metrics")
        for key, val in (get(v, "serviceMonitor.labels") or {}).items():
            check(m["metadata"]["labels"].get(key) == val, f"{name}: ServiceMonitor label {key}")

    certs = by_kind.get("Certificate", [])
    check(len(certs) == (1 if get(v, "tls.certManager.enabled") else 0), f"{name}: Certificate iff tls.certManager.enabled")
    for c in certs:
        check(c["apiVersion"] == CRD_KINDS["Certificate"] and c["spec"]["secretName"] == get(v, "tls.secretName"), f"{name}: Certificate writes tls.secretName")
        check(c["spec"]["issuerRef"]["name"] == get(v, "tls.certManager.issuerRef.name") and c["spec"]["dnsNames"] == get(v, "tls.certManager.dnsNames"), f"{name}: Certificate issuer and names")

    check(len(by_kind.get("ServiceAccount", [])) == (1 if get(v, "serviceAccount.create") else 0), f"{name}: ServiceAccount iff create")
    for d in deployments.values():
        want_sa = get(v, "serviceAccount.name") or (f"{RELEASE}-switchboard" if get(v, "serviceAccount.create") else "default")
        check(d["spec"]["template"]["spec"]["serviceAccountName"] == want_sa, f"{name}: pods use ServiceAccount {want_sa}")
        ann = d["spec"]["template"]["metadata"].get("annotations") or {}
        check(("prometheus.io/scrape" in ann) == bool(get(v, "prometheusAnnotations")), f"{name}: Prometheus annotations iff prometheusAnnotations")

    for s in by_kind.get("Secret", []):
        check(s["data"] and all(isinstance(x, str) for x in s["data"].values()), f"{name}: Secret {s['metadata']['name']} has data")
    if get(v, "auth.existingSecret"):
        check(f"{RELEASE}-switchboard" not in {s["metadata"]["name"] for s in by_kind.get("Secret", [])}, f"{name}: no chart Secret with existingSecret")

    insecure = not (get(v, "auth.jwtSecret") or get(v, "auth.existingSecret") or get(v, "auth.publicKey") or get(v, "auth.existingPublicKeySecret"))
    check(("WARNING" in notes) == insecure, f"{name}: NOTES warns iff no JWT secret or public key")
    check("switchboard token" in notes and "/ws" in notes and "/wt" in notes, f"{name}: NOTES tells how to connect and mint a token")


def check_monitoring(name: str, docs: list[tuple[str, dict]], v: dict) -> None:
    """The dashboard ConfigMap and the PrometheusRule: present iff enabled, well formed, and
    carrying the values they were rendered with."""
    rules = [d for _, d in docs if d["kind"] == "PrometheusRule"]
    dashboards = [d for _, d in docs if d["kind"] == "ConfigMap" and "switchboard.json" in (d.get("data") or {})]
    check(len(rules) == (1 if get(v, "prometheusRule.enabled") else 0), f"{name}: PrometheusRule iff prometheusRule.enabled")
    check(len(dashboards) == (1 if get(v, "grafanaDashboard.enabled") else 0), f"{name}: dashboard ConfigMap iff grafanaDashboard.enabled")
    for cm in dashboards:
        meta = cm["metadata"]
        check(meta.get("namespace") == (get(v, "grafanaDashboard.namespace") or NAMESPACE), f"{name}: dashboard ConfigMap namespace")
        check(meta["labels"].get(get(v, "grafanaDashboard.label")) == get(v, "grafanaDashboard.labelValue"), f"{name}: dashboard ConfigMap carries the sidecar's label")
        for key, val in (get(v, "grafanaDashboard.annotations") or {}).items():
            check((meta.get("annotations") or {}).get(key) == val, f"{name}: dashboard annotation {key}")
        try:
            shipped = json.loads(cm["data"]["switchboard.json"])
        except json.JSONDecodeError as e:
            check(False, f"{name}: the dashboard ConfigMap holds JSON ({e})")
            continue
        check(shipped == json.loads(DASHBOARD.read_text()), f"{name}: the ConfigMap ships files/grafana-dashboard.json unchanged")
    for rule in rules:
        check(rule["apiVersion"] == CRD_KINDS["PrometheusRule"], f"{name}: PrometheusRule apiVersion")
        for key, val in (get(v, "prometheusRule.labels") or {}).items():
            check(rule["metadata"]["labels"].get(key) == val, f"{name}: PrometheusRule label {key}")
        check(set(rule["spec"]) == {"groups"}, f"{name}: PrometheusRule spec has groups only")
        alerts = {}
        for group in rule["spec"]["groups"]:
            check(set(group) <= RULE_GROUP_FIELDS and group.get("name") and group.get("rules"), f"{name}: rule group {group.get('name')} is well formed: {sorted(group)}")
            for r in group.get("rules") or []:
                who = f"{name}: alert {r.get('alert')}"
                check(set(r) <= RULE_FIELDS, f"{who}: only known rule fields ({sorted(set(r) - RULE_FIELDS)})")
                check(r.get("alert") not in alerts, f"{who}: alert names are unique")
                alerts[r.get("alert")] = r
                expr = r.get("expr")
                check(isinstance(expr, str) and expr.strip(), f"{who}: has an expression")
                expr = expr or ""
                check("{{" not in expr and ".Values" not in expr, f"{who}: no template left in the expression")
                check(f'namespace="{NAMESPACE}"' in expr, f"{who}: selectors scoped to the release's namespace")
                check(expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), f"{who}: balanced brackets")
                if "for" in r:
                    check(isinstance(r["for"], str) and PROM_DURATION.match(r["for"]), f"{who}: 'for' is a Prometheus duration ({r['for']!r})")
                labels = r.get("labels") or {}
                check(labels.get("severity") in ("warning", "critical"), f"{who}: severity warning or critical (its own, over alertLabels)")
                for key, val in (get(v, "prometheusRule.alertLabels") or {}).items():
                    if key != "severity":
                        check(labels.get(key) == val, f"{who}: alert label {key} from alertLabels")
                ann = r.get("annotations") or {}
                check(ann.get("summary") and ann.get("description"), f"{who}: summary and description")
                text = " ".join(str(x) for x in ann.values())
                check("{{ $labels.pod }}" in text and "{{`" not in text, f"{who}: annotations carry Prometheus' templates ($labels.pod), not Helm's")
        disabled = set(get(v, "prometheusRule.disabledAlerts") or [])
        check(set(alerts) == set(ALERTS) - disabled, f"{name}: alerts {sorted(alerts)} == the expected ones less {sorted(disabled)}")
        t = get(v, "prometheusRule.thresholds") or {}

        def has(alert: str, text: str, where: str = "expr") -> None:
            if alert in alerts:
                got = str(alerts[alert].get(where))
                check(text in got, f"{name}: {alert} {where} has {text!r}: {got}")

        has("SwitchboardNodeNotReady", str(t.get("notReadyFor")), "for")
        has("SwitchboardNatsDisconnected", str(t.get("natsDisconnectedFor")), "for")
        has("SwitchboardSlowConsumersHigh", f"> {t.get('slowConsumersPerSecond')}")
        has("SwitchboardErrorRateHigh", f"> {t.get('errorsPerSecond')}")
        has("SwitchboardConnectionsNearLimit", f"> {t.get('connectionsNearLimitRatio')}")
        has("SwitchboardCertificateExpiring", f"< {t.get('certificateExpiryDays')} * 86400")
        has("SwitchboardCertificateExpiring", f"< {t.get('generatedCertificateExpiryDays')} * 86400")


def check_dashboard_file() -> None:
    """files/grafana-dashboard.json: a Grafana dashboard whose panels cover the issue's list,
    query through the ${datasource} variable, filter by $namespace and $pod, and do not overlap."""
    d = json.loads(DASHBOARD.read_text())
    check(d.get("uid") and d.get("title") and d.get("schemaVersion", 0) >= 36, "dashboard: uid, title, schemaVersion")
    variables = {x["name"]: x for x in get(d, "templating.list", [])}
    check(get(variables, "datasource.type") == "datasource" and get(variables, "datasource.query") == "prometheus", "dashboard: a Prometheus data source variable")
    check({"namespace", "pod"} <= set(variables), "dashboard: namespace and pod variables")
    panels = d.get("panels") or []
    titles = [p.get("title") for p in panels]
    for want in DASHBOARD_PANELS:
        check(want in titles, f"dashboard: a panel {want!r}")
    check(len(set(p.get("id") for p in panels)) == len(panels), "dashboard: panel ids are unique")
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p.get("gridPos") or {}
        ok = all(isinstance(g.get(k), int) for k in "hwxy") and g["x"] >= 0 and g["x"] + g["w"] <= 24
        check(ok, f"dashboard: panel {p.get('title')!r} fits the 24-column grid")
        if not ok:
            continue
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        check(not (mine & cells), f"dashboard: panel {p.get('title')!r} overlaps another")
        cells |= mine
        if p.get("type") == "row":
            continue
        targets = p.get("targets") or []
        check(targets and get(p, "datasource.uid") == "${datasource}", f"dashboard: panel {p.get('title')!r} queries the ${{datasource}} variable")
        for target in targets:
            expr = target.get("expr") or ""
            check(get(target, "datasource.uid") == "${datasource}", f"dashboard: {p.get('title')!r} target uses ${{datasource}}")
            check('namespace="$namespace"' in expr and 'pod=~"$pod"' in expr,
                  f"dashboard: {p.get('title')!r} filters by $namespace and $pod: {expr}")


# --------------------------------------------------------------------------- documentation


def documented_values() -> tuple[list[str], list[str]]:
    """(keys with a '# --' comment, leaf keys) of values.yaml, as dotted paths."""
    documented, leaves, stack = [], [], []
    pending = False
    for line in (CHART / "values.yaml").read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            pending = True
            continue
        m = re.match(r"^( *)([A-Za-z][A-Za-z0-9_.-]*):(.*)$", line)
        if not m or stripped.startswith("#"):
            continue
        indent, key, rest = len(m.group(1)), m.group(2), m.group(3).strip()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([k for _, k in stack] + [key])
        # Keys inside a map value documented as a whole (annotations, resources) are data.
        if any(path.startswith(d + ".") for d in documented):
            continue
        if pending:
            documented.append(path)
        pending = False
        if rest == "" or rest.startswith("#"):
            stack.append((indent, key))
        else:
            leaves.append(path)
    return documented, leaves


def check_docs(chart: helm_python.Chart) -> None:
    meta = chart.metadata
    check(
        meta.get("apiVersion") == "v2" and meta.get("version") == "0.1.0" and meta.get("appVersion") == "0.1.0",
        "Chart.yaml: apiVersion v2, version 0.1.0, appVersion 0.1.0",
    )
    documented, leaves = documented_values()
    for leaf in leaves:
        check(any(leaf == d or leaf.startswith(d + ".") for d in documented), f"values.yaml: {leaf} has a '# --' comment")
    readme = (CHART / "README.md").read_text()
    table = set(re.findall(r"^\| `([^`]+)` \|", readme, re.M))
    for d in documented:
        check(d in table, f"README.md: value {d} is in the values table")
    for t in sorted(table - set(documented)):
        check(False, f"README.md: table row {t} is not a value in values.yaml")
    check(all(x in readme for x in ("jetstream:", "cluster:", "replicas: 3", "nats://nats:4222", "2.10")), "README.md: the official NATS chart snippet")
    documented_alerts = set(re.findall(r"^\| \*\*(Switchboard\w+)\*\* \|", readme, re.M))
    check(documented_alerts == set(ALERTS), f"README.md: the alerts table lists every alert ({sorted(documented_alerts ^ set(ALERTS))})")
    rule_file = RULES.read_text()
    check(all(f"- alert: {a}\n" in rule_file for a in ALERTS), "files/prometheus-rules.yaml: has every alert")

    # The schema types every value and accepts the defaults.
    schema = json.loads((CHART / "values.schema.json").read_text())

    def node(path: str) -> dict | None:
        n = schema
        for part in path.split("."):
            props = n.get("properties") or {}
            if part in props:
                n = props[part]
            elif isinstance(n.get("additionalProperties"), dict) or n.get("additionalProperties") is True:
                return n
            else:
                return None
        return n

    for d in documented:
        n = node(d)
        check(n is not None and ("type" in n or "oneOf" in n), f"values.schema.json: {d} is typed")
    check(schema.get("additionalProperties") is False, "values.schema.json: unknown top-level values are refused")
    try:
        chart.validate_schema({})
        check(True, "")
    except helm_python.HelmError as e:
        check(False, f"values.schema.json refuses the defaults: {e}")


# --------------------------------------------------------------------------- main


def validator_self_test() -> None:
    """kubernetes-validate must actually refuse a bad manifest, or the rest proves nothing."""
    bad = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}, "spec": {"ports": [{"port": 80, "protocol": "UDP", "bogus": 1}]}}
    for version in KUBE_VERSIONS:
        try:
            kubernetes_validate.validate(bad, version, strict=True)
            check(False, f"kubernetes-validate {version} accepted an unknown field")
        except kubernetes_validate.ValidationError:
            check(True, "")


def main() -> int:
    started = time.monotonic()
    print(f"helm-python-sdk {helm_python.__version__} (Helm SDK {helm_python.helm_sdk_version()}), kubernetes-validate {kubernetes_validate.version.__version__}")
    validator_self_test()
    chart = helm_python.Chart.load(str(CHART))
    check_docs(chart)
    check_dashboard_file()

    value_sets = sorted((CHART / "ci").glob("*.yaml"))
    check(len(value_sets) >= 7, f"at least 7 value sets in ci/ (found {len(value_sets)})")
    rendered_sets = validated = 0
    skipped: dict[str, int] = {}
    for path in value_sets:
        name = path.name
        values = yaml.safe_load(path.read_text()) or {}

        lint = helm_python.lint(str(CHART), values, strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSIONS[0]}")
        problems = [m for m in lint.get("messages") or [] if m.get("severity", 0) >= 2] + list(lint.get("errors") or [])
        for p in problems:
            print(f"lint ({name}): {p}")
        check(not problems, f"{name}: helm lint --strict is clean")

        try:
            rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
        except helm_python.HelmError as e:
            check(False, f"{name}: renders ({e})")
            continue
        rendered_sets += 1
        docs = manifests(rendered)
        notes = next((t for p, t in rendered.items() if p.endswith("NOTES.txt")), "")
        for src, doc in docs:
            if doc["kind"] in CRD_KINDS:
                skipped[doc["kind"]] = skipped.get(doc["kind"], 0) + 1
                continue
            errors = []
            for version in KUBE_VERSIONS:
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as e:
                    errors.append(f"Kubernetes {version}: {getattr(e, 'message', e)}")
            if check(not errors, f"{name}: {src} {doc['kind']} {doc['metadata'].get('name')} is invalid: {'; '.join(errors)}"):
                validated += 1
        v = chart.merge_values(values)
        secrets = {d["metadata"]["name"]: d for _, d in docs if d["kind"] == "Secret"}
        check_deployments(name, docs, v, secrets)
        check_services(name, docs, v)
        check_others(name, docs, v, notes)
        check_monitoring(name, docs, v)
        kinds = sorted({d["kind"] for _, d in docs})
        print(f"ok: {name}: {len(docs)} manifests ({', '.join(kinds)})")

    must_fail = sorted((CHART / "ci-fail").glob("*.yaml"))
    check(any(p.name == "replicas-without-nats-values.yaml" for p in must_fail), "ci-fail/ has replicas-without-nats-values.yaml")
    refused = 0
    for path in must_fail:
        text = path.read_text()
        expect = re.search(r"^# expect: (.+)$", text, re.M)
        if not check(expect, f"{path.name}: has an '# expect: ...' line"):
            continue
        try:
            chart.render(yaml.safe_load(text) or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
            check(False, f"{path.name}: must be refused, but rendered")
        except helm_python.HelmError as e:
            message = " ".join(str(e).split())
            if check(expect.group(1) in message, f"{path.name}: refused, but not with {expect.group(1)!r}: {message}"):
                refused += 1
                print(f"ok: {path.name} refused: {message[:150]}")

    skipped_text = ", ".join(f"{n} {k}" for k, n in sorted(skipped.items())) or "none"
    print(
        f"chart: {rendered_sets} value sets rendered, {validated} manifests validated against Kubernetes "
        f"{' and '.join(KUBE_VERSIONS)} (custom resources without a schema, skipped: {skipped_text}), "
        f"{refused} expected failures confirmed ({time.monotonic() - started:.1f} s)"
    )
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
