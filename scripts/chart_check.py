#!/usr/bin/env python3
"""Lint and render the Helm chart with Helm's own library (helm-python-sdk), for the default
values and every value set in helm/switchboard/ci/, validate every rendered manifest against
Kubernetes' schemas offline (kubernetes-validate, strict), check facts the product relies on,
and make sure the value sets in helm/switchboard/ci-fail/ are refused."""

import pathlib
import sys

import helm_python
import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "switchboard"
KUBE_VERSION = "1.30.0"
# Custom resources kubernetes-validate has no schema for.
CRD_KINDS = {"ServiceMonitor", "Certificate"}

passed, failed = 0, 0


def check(ok, what):
    global passed, failed
    if ok:
        passed += 1
    else:
        failed += 1
        print(f"FAIL: {what}")


def manifests(rendered):
    for path, text in sorted(rendered.items()):
        if not path.endswith(".yaml"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                yield path, doc


def facts(name, docs, drain_timeout):
    deployments = [d for _, d in docs if d["kind"] == "Deployment"]
    check(deployments, f"{name}: renders a Deployment")
    for d in deployments:
        spec = d["spec"]["template"]["spec"]
        who = f"{name}: {d['metadata']['name']}"
        check(spec["terminationGracePeriodSeconds"] == drain_timeout + 15, f"{who}: grace period = drain timeout + 15")
        check(spec["securityContext"]["runAsNonRoot"] is True, f"{who}: runAsNonRoot")
        for c in spec["containers"]:
            check(c["securityContext"]["readOnlyRootFilesystem"] is True, f"{who}: read-only root filesystem")
            check(c["readinessProbe"]["httpGet"]["path"] == "/readyz", f"{who}: readiness on /readyz")
            check(c["livenessProbe"]["httpGet"]["path"] == "/healthz", f"{who}: liveness on /healthz")
            env = {e["name"]: e for e in c["env"]}
            check(env["SWITCHBOARD_DRAIN_TIMEOUT"]["value"] == str(drain_timeout), f"{who}: drain timeout passed on")
            check("fieldRef" in env["SWITCHBOARD_NODE_ID"]["valueFrom"], f"{who}: node id from the pod name")
    udp = [d for _, d in docs if d["kind"] == "Service" and d["metadata"]["name"].endswith("-quic")]
    check(len(udp) == 1 and udp[0]["spec"]["ports"][0]["protocol"] == "UDP", f"{name}: a UDP service for QUIC")


def main():
    lint_values = {"auth": {"jwtSecret": "x" * 32}, "nats": {"url": "nats://nats:4222"}}
    lint = helm_python.lint(str(CHART), lint_values, strict=True, kube_version=f"v{KUBE_VERSION}")
    errors = [m for m in lint.get("messages") or [] if m.get("severity", 0) >= 2] + list(lint.get("errors") or [])
    for e in errors:
        print(f"lint: {e}")
    check(not errors, "helm lint --strict is clean")

    chart = helm_python.Chart.load(str(CHART))
    value_sets = sorted((CHART / "ci").glob("*-values.yaml"))
    validated, skipped = 0, set()
    for path in value_sets:
        values = yaml.safe_load(path.read_text()) or {}
        try:
            chart.validate_schema(values)
            rendered = chart.render(values, name="sb", namespace="realtime", is_install=True)
        except helm_python.HelmError as e:
            check(False, f"{path.name}: renders ({e})")
            continue
        docs = list(manifests(rendered))
        for src, doc in docs:
            if doc["kind"] in CRD_KINDS:
                skipped.add(doc["kind"])
                continue
            try:
                kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
                check(True, "")
                validated += 1
            except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as e:
                check(False, f"{path.name}: {src} ({doc['kind']}): {e}")
        merged = chart.merge_values(values)
        facts(path.name, docs, int(merged["node"]["drainTimeout"]))
        print(f"ok: {path.name}: {len(docs)} manifests")

    refused = 0
    for path in sorted((CHART / "ci-fail").glob("*-values.yaml")):
        values = yaml.safe_load(path.read_text()) or {}
        try:
            chart.validate_schema(values)
            chart.render(values, name="sb", namespace="realtime")
            check(False, f"{path.name}: must be refused, but rendered")
        except helm_python.HelmError as e:
            refused += 1
            check(True, "")
            print(f"ok: {path.name} refused: {str(e).splitlines()[-1][:160]}")

    print(
        f"chart: {len(value_sets)} value sets rendered, {validated} manifests validated against Kubernetes "
        f"{KUBE_VERSION} (no schema for: {', '.join(sorted(skipped)) or 'none'}), {refused} expected refusals confirmed"
    )
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
