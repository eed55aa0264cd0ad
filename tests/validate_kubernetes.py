"""Validates the Kubernetes example manifests offline (the sidecar, the ticket-key rotation and the
prometheus-operator monitoring); run by tests/examples.rs.

1. Every object against its schema, strictly (unknown fields are errors):
   - built-in kinds with kubernetes-validate's copy of the Kubernetes OpenAPI schemas, for each
     Kubernetes version given with --k8s (oldest and newest supported);
   - cert-manager and prometheus-operator kinds with cloudcoil's pydantic models generated from their
     CRDs' OpenAPI schemas (types, enums, required fields); a field the model does not know is reported
     as unknown.
   A kind neither knows is an error, never a warning.
2. What the example promises across files: the Secret mounted is the one cert-manager writes, mqtls.toml
   points at files in that mount, the probes hit the admin port, the grace period covers the drain, the
   security context is restrictive, the Service reaches the pod, the Mosquitto files are those of
   examples/mosquitto; the PodMonitor scrapes the pod's admin port, and the PrometheusRule holds the rules
   of the plain rule file (examples/prometheus/mqtls-alerts.yaml), whose MqtlsTargetDown matches the
   PodMonitor's job.

usage: validate_kubernetes.py --k8s 1.30 --k8s 1.37 --mosquitto-dir DIR --prometheus-rules FILE FILE.yaml...
"""

import argparse
import os
import re
import sys
import tomllib

import kubernetes_validate
import yaml
from cloudcoil.models.cert_manager import v1 as cm
from cloudcoil.models.prometheus_operator import v1 as pm

# The custom resources' apiVersion -> kind -> model generated from the CRD's schema.
CRD_MODELS = {
    "cert-manager.io/v1": {"Issuer": cm.Issuer, "ClusterIssuer": cm.ClusterIssuer, "Certificate": cm.Certificate},
    "monitoring.coreos.com/v1": {"PodMonitor": pm.PodMonitor, "PrometheusRule": pm.PrometheusRule},
}

errors = []


def fail(where, msg):
    errors.append(f"{where}: {msg}")


def unknown_fields(given, kept, path=""):
    """Keys present in the manifest but absent after a round trip through the model."""
    out = []
    if isinstance(given, dict):
        for k, v in given.items():
            if not isinstance(kept, dict) or k not in kept:
                out.append(f"{path}.{k}".lstrip("."))
            else:
                out += unknown_fields(v, kept[k], f"{path}.{k}")
    elif isinstance(given, list) and isinstance(kept, list):
        for i, (g, k) in enumerate(zip(given, kept)):
            out += unknown_fields(g, k, f"{path}[{i}]")
    return out


def validate_schema(where, doc, versions):
    kind, api = doc.get("kind"), doc.get("apiVersion", "")
    group = api.split("/")[0]
    if any(group == known.split("/")[0] for known in CRD_MODELS):
        model = CRD_MODELS.get(api, {}).get(kind)
        if model is None:
            return fail(where, f"no schema for {api} {kind}")
        try:
            obj = model.model_validate(doc)
        except Exception as e:  # pydantic.ValidationError
            return fail(where, f"{api} {kind} does not validate: {e}")
        kept = obj.model_dump(mode="json", by_alias=True, exclude_unset=True)
        for field in unknown_fields(doc, kept):
            fail(where, f"{api} {kind}: unknown field {field}")
        return
    for v in versions:
        try:
            kubernetes_validate.validate(doc, v, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            fail(where, f"Kubernetes {v}: {path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            fail(where, e.message)


def duration_seconds(text):
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for u in sorted(units, key=len, reverse=True):
        if text.endswith(u):
            return float(text[: -len(u)]) * units[u]
    raise ValueError(f"unsupported duration {text!r}")


def check_container_security(where, c):
    sc = c.get("securityContext", {})
    if sc.get("readOnlyRootFilesystem") is not True:
        fail(where, f"container {c['name']}: readOnlyRootFilesystem must be true")
    if sc.get("allowPrivilegeEscalation") is not False:
        fail(where, f"container {c['name']}: allowPrivilegeEscalation must be false")
    if sc.get("capabilities", {}).get("drop") != ["ALL"]:
        fail(where, f"container {c['name']}: capabilities.drop must be [ALL]")
    if sc.get("capabilities", {}).get("add"):
        fail(where, f"container {c['name']}: adds capabilities")
    if not sc.get("runAsUser"):
        fail(where, f"container {c['name']}: runAsUser must be set and non-zero")
    res = c.get("resources", {})
    if not res.get("requests") or not res.get("limits"):
        fail(where, f"container {c['name']}: needs resources.requests and resources.limits")


def check_cronjobs(by_kind, configmaps):
    """The ticket-key rotation (ticket-keys.yaml): hardened like the pod, allowed to read and replace the
    Secret it rotates and no other, its script in a ConfigMap of the manifests."""
    roles = {d["metadata"]["name"]: d for _, d in by_kind.get("Role", [])}
    for where, cj in by_kind.get("CronJob", []):
        if cj["spec"].get("concurrencyPolicy") != "Forbid":
            fail(where, "concurrencyPolicy must be Forbid: two rotations at once could each drop a key")
        pod = cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        psc = pod.get("securityContext", {})
        if psc.get("runAsNonRoot") is not True or psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            fail(where, "pod securityContext must set runAsNonRoot and seccompProfile RuntimeDefault")
        for c in pod["containers"]:
            check_container_security(where, c)
        account = pod.get("serviceAccountName")
        verbs = {}
        for _, binding in by_kind.get("RoleBinding", []):
            if not any(s.get("kind") == "ServiceAccount" and s.get("name") == account for s in binding["subjects"]):
                continue
            for rule in roles.get(binding["roleRef"]["name"], {}).get("rules", []):
                if "secrets" not in rule.get("resources", []):
                    continue
                if not rule.get("resourceNames"):
                    fail(where, f"ServiceAccount {account} may touch every Secret: name the one it rotates")
                for name in rule.get("resourceNames", []):
                    verbs.setdefault(name, set()).update(rule.get("verbs", []))
        secrets = {e["value"] for c in pod["containers"] for e in c.get("env", []) if e["name"] == "SECRET"}
        if not secrets:
            fail(where, "no SECRET names the Secret it rotates")
        for secret in secrets:
            if not {"get", "update"} <= verbs.get(secret, set()):
                fail(where, f"ServiceAccount {account} may not get and update the Secret {secret}")
        for v in pod.get("volumes", []):
            name = v.get("configMap", {}).get("name")
            if name and name not in configmaps:
                fail(where, f"ConfigMap {name} is in no manifest")


def check_monitoring(by_kind, pod_labels, mq, admin_port, rules_file):
    """The PodMonitor scrapes /metrics on mqtls' admin port of the Deployment's pods; the PrometheusRule
    holds exactly the groups of the plain rule file, and its target-down alert matches the PodMonitor's job
    (NAMESPACE/NAME: the example assumes the default namespace, like certificates.yaml)."""
    monitors = by_kind.get("PodMonitor", [])
    if len(monitors) != 1:
        return fail("manifests", f"expected one PodMonitor, found {len(monitors)}")
    where, pmon = monitors[0]
    sel = pmon["spec"].get("selector", {}).get("matchLabels", {})
    if not sel or any(pod_labels.get(k) != v for k, v in sel.items()):
        fail(where, f"selector {sel} does not select the Deployment's pods {pod_labels}")
    ports = {p["name"]: p["containerPort"] for p in mq["ports"]}
    for ep in pmon["spec"].get("podMetricsEndpoints", []):
        if ports.get(ep.get("port")) != admin_port:
            fail(where, f"endpoint port {ep.get('port')} is not mqtls' admin port ({admin_port})")
        if ep.get("path", "/metrics") != "/metrics":
            fail(where, f"endpoint path {ep.get('path')} is not /metrics")
    if not pmon["spec"].get("podMetricsEndpoints"):
        fail(where, "no podMetricsEndpoints")

    with open(rules_file) as f:
        plain = yaml.safe_load(f)
    rules = by_kind.get("PrometheusRule", [])
    if len(rules) != 1:
        return fail("manifests", f"expected one PrometheusRule, found {len(rules)}")
    rwhere, rule = rules[0]
    if rule["spec"] != plain:
        fail(rwhere, f"spec differs from {rules_file}: keep them identical")
    job = f"{pmon['metadata'].get('namespace', 'default')}/{pmon['metadata']['name']}"
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            if r.get("alert") != "MqtlsTargetDown":
                continue
            m = re.search(r'up\{job=~"([^"]*)"\}', r["expr"])
            if not m or not re.fullmatch(m.group(1), job):
                fail(rwhere, f"MqtlsTargetDown does not match the PodMonitor's job {job}: {r['expr']}")


def check_consistency(objs, mosquitto_dir, rules_file):
    by_kind = {}
    for where, doc in objs:
        by_kind.setdefault(doc["kind"], []).append((where, doc))
    deployments = by_kind.get("Deployment", [])
    if len(deployments) != 1:
        return fail("manifests", f"expected one Deployment, found {len(deployments)}")
    where, dep = deployments[0]
    pod = dep["spec"]["template"]["spec"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    containers = {c["name"]: c for c in pod["containers"]}
    if set(containers) != {"mqtls", "mosquitto"}:
        return fail(where, f"expected containers mqtls and mosquitto, found {sorted(containers)}")
    psc = pod.get("securityContext", {})
    if psc.get("runAsNonRoot") is not True:
        fail(where, "pod securityContext.runAsNonRoot must be true")
    if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        fail(where, "pod seccompProfile must be RuntimeDefault")
    for c in containers.values():
        check_container_security(where, c)

    configmaps = {d["metadata"]["name"]: d for _, d in by_kind.get("ConfigMap", [])}
    check_cronjobs(by_kind, configmaps)
    volumes = {v["name"]: v for v in pod["volumes"]}

    def mounted_configmap(container, key):
        for m in container.get("volumeMounts", []):
            cm_name = volumes[m["name"]].get("configMap", {}).get("name")
            if cm_name and key in configmaps.get(cm_name, {}).get("data", {}):
                return m, configmaps[cm_name]["data"][key]
        return None, None

    # mqtls: its settings file, the TLS Secret it points into, the admin port the probes use.
    mq = containers["mqtls"]
    m, toml_text = mounted_configmap(mq, "mqtls.toml")
    if toml_text is None:
        return fail(where, "mqtls has no mqtls.toml from a ConfigMap mounted")
    config_path = m["mountPath"] if m.get("subPath") else os.path.join(m["mountPath"], "mqtls.toml")
    args = mq.get("args", [])
    if args[:2] != ["--config", config_path]:
        fail(where, f"mqtls args must start with --config {config_path}, found {args}")
    conf = tomllib.loads(toml_text)
    tls_files = [conf["cert"], conf["key"], conf["client_ca"]]
    tls_dir = os.path.dirname(conf["cert"])
    mount = next((m for m in mq["volumeMounts"] if m["mountPath"] == tls_dir), None)
    if mount is None:
        return fail(where, f"nothing mounted at {tls_dir}, where mqtls.toml's cert is")
    if "subPath" in mount:
        fail(where, "the TLS Secret must be mounted whole: the kubelet never updates subPath mounts")
    secret_name = volumes[mount["name"]].get("secret", {}).get("secretName")
    certs = {d["spec"]["secretName"] for _, d in by_kind.get("Certificate", [])}
    if secret_name not in certs:
        fail(where, f"the Secret mounted at {tls_dir} ({secret_name}) is written by no cert-manager Certificate")
    for f in tls_files:
        if os.path.dirname(f) != tls_dir or os.path.basename(f) not in ("tls.crt", "tls.key", "ca.crt"):
            fail(where, f"mqtls.toml file {f} is not one of the keys cert-manager writes in {tls_dir}")
    if "mode" in mount or volumes[mount["name"]]["secret"].get("items"):
        fail(where, "the TLS Secret volume must keep cert-manager's key names (no items)")
    if psc.get("fsGroup") != mq["securityContext"].get("runAsGroup"):
        fail(where, "fsGroup must be mqtls' group so it can read the Secret's files")

    admin_port = int(conf["admin"].rsplit(":", 1)[1])
    ports = {p["name"]: p["containerPort"] for p in mq["ports"]}
    listen_port = int(conf["listen"].rsplit(":", 1)[1])
    if ports.get("admin") != admin_port or ports.get("mqtts") != listen_port:
        fail(where, f"container ports {ports} do not match mqtls.toml (admin {admin_port}, listen {listen_port})")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = mq.get(probe, {}).get("httpGet", {})
        if get.get("path") != path or get.get("port") not in ("admin", admin_port):
            fail(where, f"mqtls {probe} must GET {path} on the admin port")
    drain = duration_seconds(conf.get("drain_timeout", "30s"))
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if not drain < grace:
        fail(where, f"terminationGracePeriodSeconds {grace} must exceed drain_timeout {drain}s")
    stop = containers["mosquitto"].get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    if not drain <= stop < grace:
        fail(where, f"Mosquitto's preStop sleep ({stop}s) must keep it up through the drain and end before the grace period")

    # Mosquitto: the example files, loopback only.
    mo = containers["mosquitto"]
    for key in ("mosquitto.conf", "acl"):
        m, text = mounted_configmap(mo, key)
        if text is None:
            fail(where, f"mosquitto has no {key} from a ConfigMap mounted")
            continue
        with open(os.path.join(mosquitto_dir, key)) as f:
            if text != f.read():
                fail(where, f"ConfigMap {key} differs from examples/mosquitto/{key}")
        if key == "mosquitto.conf":
            if os.path.join(m["mountPath"], key) not in mo.get("command", []) + mo.get("args", []):
                fail(where, "mosquitto is not started with the mounted mosquitto.conf")
            listeners = [l.split() for l in text.splitlines() if l.startswith("listener ")]
            if not listeners or any(l[2:] != ["127.0.0.1"] for l in listeners):
                fail(where, f"Mosquitto must listen on 127.0.0.1 only: {listeners}")
            acl = next(l.split()[1] for l in text.splitlines() if l.startswith("acl_file "))
            if acl != os.path.join(m["mountPath"], "acl"):
                fail(where, f"acl_file {acl} is not the mounted acl")
    if mo.get("ports"):
        fail(where, "Mosquitto must not expose ports: devices reach it only through mqtls")

    check_monitoring(by_kind, labels, mq, admin_port, rules_file)

    # The Service sends 8883 to this pod's mqtls.
    services = by_kind.get("Service", [])
    if not services:
        fail("manifests", "no Service")
    for swhere, svc in services:
        sel = svc["spec"].get("selector", {})
        if any(labels.get(k) != v for k, v in sel.items()) or not sel:
            fail(swhere, f"Service selector {sel} does not select the Deployment's pods {labels}")
        for p in svc["spec"]["ports"]:
            if p["targetPort"] not in ("mqtts", listen_port) or p.get("protocol", "TCP") != "TCP":
                fail(swhere, f"Service port {p} must be TCP to mqtls' listener")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--k8s", action="append", required=True)
    ap.add_argument("--mosquitto-dir", required=True)
    ap.add_argument("--prometheus-rules", required=True)
    ap.add_argument("files", nargs="+")
    a = ap.parse_args()
    objs = []
    for path in a.files:
        with open(path) as f:
            for i, doc in enumerate(d for d in yaml.safe_load_all(f) if d):
                where = f"{path}#{i} {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
                validate_schema(where, doc, a.k8s)
                objs.append((where, doc))
    check_consistency(objs, a.mosquitto_dir, a.prometheus_rules)
    for e in errors:
        print(f"ERROR {e}")
    kinds = sorted({d["kind"] for _, d in objs})
    print(f"{len(objs)} objects ({', '.join(kinds)}) in {len(a.files)} files: {len(errors)} errors")
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
