#!/usr/bin/env python3
"""Checks the Helm chart as far as can be done without a Kubernetes cluster.

For every value set in helm/tandem/ci/: lint with the real Helm library (helm-python-sdk, no
warnings allowed), render, validate every manifest against the Kubernetes API schemas
(kubernetes-validate, strict: unknown fields are errors), assert what the value set promises,
and run the real tandem binary's argument parser on the node container's rendered command line
and environment (`tandem serve ... --check-config`), with every file it names provided by the
volumes the pod mounts. Then wrong values must be refused with a message naming the problem.

Usage: check_chart.py --tandem <path to the tandem binary>. Exits non-zero on the first failure.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "tandem"
RELEASE, NAMESPACE = "tandem", "data"
KUBE_VERSION = kubernetes_validate.latest_version()
# Kinds of CRDs the chart can render; the Kubernetes schemas do not have them.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}


class CheckFailed(Exception):
    pass


def check(condition, message):
    if not condition:
        raise CheckFailed(message)


def load_values(name):
    return yaml.safe_load((CHART / "ci" / name).read_text()) or {}


def render(values):
    """The rendered objects of a release, as a list of dicts (NOTES.txt left out)."""
    manifests = helm.Chart.load(str(CHART)).render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc["__template"] = path
                objects.append(doc)
    return objects


def lint(values):
    report = helm.lint(str(CHART), values, namespace=NAMESPACE)
    problems = [m for m in report.get("messages", []) if m["severity"] >= 2]
    check(not problems and not report.get("errors"), f"helm lint: {problems} {report.get('errors')}")


def validate(obj):
    kind = (obj["apiVersion"], obj["kind"])
    body = {k: v for k, v in obj.items() if k != "__template"}
    if kind in CRD_KINDS:
        check(body["spec"]["endpoints"][0]["path"] == "/metrics", "the ServiceMonitor scrapes /metrics")
        return
    try:
        kubernetes_validate.validate(body, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        raise CheckFailed(f"{obj['__template']}: {obj['kind']} {obj['metadata']['name']}: {e.message} at {list(e.path)}")


def find(objects, kind, name=None):
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    return found


def one(objects, kind, name):
    found = find(objects, kind, name)
    check(len(found) == 1, f"expected one {kind} {name}, found {len(found)}")
    return found[0]


def node_container(objects):
    sts = one(objects, "StatefulSet", RELEASE)
    containers = sts["spec"]["template"]["spec"]["containers"]
    return sts, next(c for c in containers if c["name"] == "tandem")


def flag(container, name):
    values = [a.split("=", 1)[1] for a in container["args"] if a.startswith(f"--{name}=")]
    check(len(values) <= 1, f"--{name} given {len(values)} times")
    return values[0] if values else None


def env_of(container):
    return {e["name"]: e for e in container.get("env", [])}


def check_common(objects, values):
    """What every value set must hold."""
    for obj in objects:
        validate(obj)
    sts, node = node_container(objects)
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    check(spec["replicas"] == values.get("replicaCount", 3), f"replicas {spec['replicas']} follow replicaCount")
    check(spec["podManagementPolicy"] == "Parallel", "nodes start in parallel")
    check(spec["serviceName"] == f"{RELEASE}-peers", "pods get DNS names under the peers Service")
    check(spec["volumeClaimTemplates"][0]["metadata"]["name"] == "data", "one PVC per pod for parts")
    peers = one(objects, "Service", f"{RELEASE}-peers")
    check(peers["spec"]["clusterIP"] == "None" and peers["spec"]["publishNotReadyAddresses"], "headless peers Service")
    client = one(objects, "Service", RELEASE)
    check(client["spec"]["ports"][0]["name"] == "http", "the client Service serves HTTP")

    check(node["startupProbe"]["httpGet"]["path"] == "/health", "startup probe on /health")
    check(node["livenessProbe"]["httpGet"]["path"] == "/health", "liveness probe on /health")
    check(node["readinessProbe"]["httpGet"]["path"] == "/ready", "readiness probe on /ready")
    pre_stop = node["lifecycle"]["preStop"]["exec"]["command"]
    check(pre_stop[:2] == ["/usr/local/bin/tandem", "drain"], f"preStop drains: {pre_stop}")
    check(f"--http-addr=127.0.0.1:{values.get('ports', {}).get('http', 8123)}" in pre_stop, f"preStop drains this node: {pre_stop}")
    drain = int(next(a for a in pre_stop if a.startswith("--timeout-seconds=")).split("=")[1])
    check(pod["terminationGracePeriodSeconds"] > drain, "the grace period outlasts the drain")
    security = node["securityContext"]
    check(security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"], "locked-down container")
    check(pod["securityContext"]["runAsNonRoot"], "non-root pod")
    check(pod["topologySpreadConstraints"], "spread over zones")

    pdb_wanted = values.get("podDisruptionBudget", {}).get("enabled", True)
    pdbs = find(objects, "PodDisruptionBudget", RELEASE)
    check(len(pdbs) == (1 if pdb_wanted else 0), f"PodDisruptionBudget present: {pdb_wanted}")
    if pdbs:
        check(pdbs[0]["spec"]["maxUnavailable"] == 1, "PDB maxUnavailable 1")

    # Secrets by reference: no literal value of anything secret in the node's env or flags,
    # and the only Secrets rendered are the ones the chart generates itself.
    for name, entry in env_of(node).items():
        if re.search("SECRET|KEY|PASSWORD|TOKEN", name):
            check("valueFrom" in entry and "secretKeyRef" in entry["valueFrom"], f"{name} comes from a Secret")
    check(not any(a.startswith("--cluster-secret=") for a in node["args"]), "no secret on the command line")
    generated = {f"{RELEASE}-cluster-secret", f"{RELEASE}-admin-password", f"{RELEASE}-minio-credentials"}
    for secret in find(objects, "Secret"):
        check(secret["metadata"]["name"] in generated, f"unexpected Secret {secret['metadata']['name']}")
    cluster_secret = values.get("clusterSecret", {}).get("existingSecret")
    check(
        bool(find(objects, "Secret", f"{RELEASE}-cluster-secret")) != bool(cluster_secret),
        "the cluster secret is generated exactly when no existingSecret is given",
    )
    admin_secret = values.get("adminPassword", {}).get("existingSecret")
    check(
        bool(find(objects, "Secret", f"{RELEASE}-admin-password")) != bool(admin_secret),
        "the admin password is generated exactly when no existingSecret is given",
    )
    # A node serves on 0.0.0.0: without a first user's password it would refuse to start, and
    # the preStop drain must sign in with the same password.
    admin_files = [a.split("=", 1)[1] for a in node["args"] if a.startswith("--admin-password-file=")]
    check(len(admin_files) == 1, "the node gets the first user's password from a file")
    check(f"--password-file={admin_files[0]}" in drain_command(node), "the preStop drain signs in with the password")
    return sts, node


def drain_command(node):
    return node["lifecycle"]["preStop"]["exec"]["command"]


def run_check_config(binary, sts, node, workdir):
    """Runs `tandem <rendered args> --check-config` with the rendered environment; files the
    flags name must come from the pod's volumes, which are laid out under `workdir`."""
    pod = sts["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = sorted(node["volumeMounts"], key=lambda m: len(m["mountPath"]), reverse=True)
    secret_values = []
    for mount in mounts:
        target = workdir / mount["mountPath"].lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        secret = volumes.get(mount["name"], {}).get("secret")
        if secret:
            for item in secret["items"]:
                content = f"placeholder-{secret['secretName']}-{item['key']}"
                (target / item["path"]).write_text(content + "\n")
                secret_values.append(content)

    def on_host(path):
        for mount in mounts:
            if path == mount["mountPath"] or path.startswith(mount["mountPath"] + "/"):
                return str(workdir / path.lstrip("/"))
        raise CheckFailed(f"the node reads {path}, which no volume provides (the root filesystem is read-only)")

    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    for entry in node.get("env", []):
        source = entry.get("valueFrom", {})
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        elif "fieldRef" in source:
            field = source["fieldRef"]["fieldPath"]
            env[entry["name"]] = {"metadata.name": f"{sts['metadata']['name']}-0", "metadata.namespace": NAMESPACE}[field]
        elif "secretKeyRef" in source:
            env[entry["name"]] = f"secret-{source['secretKeyRef']['key']}-value"
            secret_values.append(env[entry["name"]])

    def expand(arg):
        # Kubernetes' $(VAR) expansion of container args.
        arg = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), arg)
        if arg.startswith("--") and "=" in arg:
            name, value = arg.split("=", 1)
            if value.startswith("/") and not name.endswith("key-prefix"):
                return f"{name}={on_host(value)}"
        return arg

    args = [expand(a) for a in node["args"]]
    check(args[0] == "serve", "the image's entrypoint is tandem; the args start with `serve`")
    result = subprocess.run([binary, *args, "--check-config"], env=env, capture_output=True, text=True, timeout=60)
    check(result.returncode == 0, f"tandem refused the rendered command line {args}:\n{result.stderr}")
    for value in secret_values:
        check(value not in result.stdout, f"secrets are redacted in --check-config: {value} was printed")
    return result.stdout


def quoted(value):
    return f'"{value}"'


def check_value_sets(binary):
    sets = sorted(p.name for p in (CHART / "ci").glob("*-values.yaml"))
    check(len(sets) >= 5, f"value sets: {sets}")
    for name in sets:
        values = load_values(name)
        lint(values)
        objects = render(values)
        sts, node = check_common(objects, values)
        with tempfile.TemporaryDirectory() as tmp:
            config = run_check_config(binary, sts, node, Path(tmp))
        check(quoted(f"{RELEASE}-0") in config, "the node id is the pod name")
        advertised = f"{RELEASE}-0.{RELEASE}-peers.{NAMESPACE}.svc.cluster.local:9100"
        check(quoted(advertised) in config, f"the node announces {advertised}")
        etcd = values.get("etcd", {})
        if etcd.get("enabled", True):
            members = etcd.get("replicaCount", 3)
            etcd_sts = one(objects, "StatefulSet", f"{RELEASE}-etcd")
            check(etcd_sts["spec"]["replicas"] == members, f"{members} etcd members")
            initial = next(a for a in etcd_sts["spec"]["template"]["spec"]["containers"][0]["args"]
                           if a.startswith("--initial-cluster="))
            check(initial.count("=http://") == members, f"initial cluster of {members}: {initial}")
            endpoints = [f"http://{RELEASE}-etcd-{i}.{RELEASE}-etcd-headless.{NAMESPACE}.svc.cluster.local:2379"
                         for i in range(members)]
            check(len(find(objects, "PodDisruptionBudget", f"{RELEASE}-etcd")) == (members > 1), "etcd PDB")
        else:
            endpoints = etcd["endpoints"]
            check(not find(objects, "StatefulSet", f"{RELEASE}-etcd"), "no bundled etcd with external endpoints")
        check(flag(node, "etcd") == ",".join(endpoints), f"the node connects to {endpoints}")
        for endpoint in endpoints:
            check(quoted(endpoint) in config, f"tandem resolved etcd endpoint {endpoint}")
        if etcd.get("keyPrefix"):
            check(quoted(etcd["keyPrefix"]) in config, "the etcd key prefix")
        if etcd.get("tls", {}).get("enabled"):
            identity = etcd["tls"].get("clientCertificate", True)
            check(f"client_identity: {str(identity).lower()}" in config, "tandem connects to etcd over TLS")
            tls_volume = next(v for v in sts["spec"]["template"]["spec"]["volumes"] if v["name"] == "etcd-tls")
            check(tls_volume["secret"]["secretName"] == etcd["tls"]["existingSecret"], "etcd TLS from the Secret")

        store = values.get("objectStore", {})
        minio = values.get("minio", {}).get("enabled", False)
        bucket = store.get("bucket") or ("tandem" if minio else None)
        env = env_of(node)
        if bucket:
            check(flag(node, "s3-bucket") == bucket and quoted(bucket) in config, f"the node mirrors to {bucket}")
            endpoint = store.get("endpoint") or (f"http://{RELEASE}-minio.{NAMESPACE}.svc.cluster.local:9000"
                                                 if minio else None)
            check(flag(node, "s3-endpoint") == endpoint, f"S3 endpoint {endpoint}")
            secret = store.get("existingSecret") or (f"{RELEASE}-minio-credentials" if minio else None)
            if secret:
                for var in ("TANDEM_S3_ACCESS_KEY_ID", "TANDEM_S3_SECRET_ACCESS_KEY"):
                    check(env[var]["valueFrom"]["secretKeyRef"]["name"] == secret, f"{var} from Secret {secret}")
                check(config.count('"<set>"') >= 3, "both keys reach tandem, redacted")
            else:
                check("TANDEM_S3_ACCESS_KEY_ID" not in env, "no keys: the pod's identity (IRSA)")
                account = one(objects, "ServiceAccount", RELEASE)
                check(account["metadata"].get("annotations"), "the ServiceAccount carries the IRSA annotation")
                check(sts["spec"]["template"]["spec"]["serviceAccountName"] == RELEASE, "pods use that account")
        else:
            check(flag(node, "s3-bucket") is None and "object_store: None" in config, "no object store")
        check(bool(find(objects, "Deployment", f"{RELEASE}-minio")) == minio, "MinIO only when enabled")
        if minio:
            job = one(objects, "Job", f"{RELEASE}-minio-make-bucket")
            script = job["spec"]["template"]["spec"]["containers"][0]["command"][-1]
            check(f"local/{bucket}" in script, "the bucket tandem uses is created")

        defaults = values.get("defaults", {})
        quorum = str(defaults.get("insertQuorum", "1"))
        check(flag(node, "insert-quorum") == quorum, f"server default insert_quorum {quorum}")
        check(("insert_quorum: Auto" if quorum == "auto" else "insert_quorum:") in config, "quorum resolved")
        https = values.get("tls", {}).get("enabled", False)
        container = sts["spec"]["template"]["spec"]["containers"][0]
        schemes = {container[p]["httpGet"].get("scheme") for p in ("startupProbe", "livenessProbe", "readinessProbe")}
        check(schemes == {"HTTPS" if https else "HTTP"}, f"probes over {'HTTPS' if https else 'HTTP'}")
        check(("--tls-cert-file=/etc/tandem/tls/tls.crt" in node["args"]) == https, "the API serves HTTPS when asked")
        check(https == any(a.startswith("--ca-file=") for a in drain_command(node)), "the drain trusts the API's CA")
        interserver = values.get("interserverTls", {})
        tls_flags = [a for a in node["args"] if a.startswith("--interserver-")]
        check(len(tls_flags) == (3 if interserver.get("enabled") else 0), "interserver TLS flags when enabled")
        if interserver.get("enabled"):
            volume = next(v for v in sts["spec"]["template"]["spec"]["volumes"] if v["name"] == "interserver-tls")
            check(volume["secret"]["secretName"] == interserver["existingSecret"], "interserver TLS from the Secret")
        policy_wanted = values.get("networkPolicy", {}).get("enabled", True)
        policies = find(objects, "NetworkPolicy", RELEASE)
        check(len(policies) == (1 if policy_wanted else 0), f"NetworkPolicy present: {policy_wanted}")
        if policies:
            rules = policies[0]["spec"]["ingress"]
            grpc = [r for r in rules if any(p["port"] == "grpc" for p in r["ports"])]
            check(len(grpc) == 1 and grpc[0]["from"][0]["podSelector"]["matchLabels"] ==
                  sts["spec"]["selector"]["matchLabels"], "the gRPC port is open to tandem pods only")
            http = [r for r in rules if any(p["port"] == "http" for p in r["ports"])]
            http_from = values.get("networkPolicy", {}).get("httpFrom", [])
            check(len(http) == 1 and http[0].get("from", []) == http_from, "the HTTP port is open as httpFrom says")
        replicas = defaults.get("localReplicas")
        check(flag(node, "local-replicas") == (str(replicas) if replicas else None), "the local_replicas default")
        if replicas:
            check(re.search(rf"local_replicas: Some\(\s*{replicas},?\s*\)", config), "tandem resolved local_replicas")
        budget = values.get("localStorageBytes")
        check(flag(node, "local-storage-bytes") == (str(budget) if budget else None), "the local storage budget")
        if budget:
            check(re.search(rf"local_storage_bytes: Some\(\s*{budget},?\s*\)", config), "tandem resolved the budget")
        query_nodes = values.get("queryNodes", {}).get("replicaCount", 0)
        if query_nodes:
            query_sts = one(objects, "StatefulSet", f"{RELEASE}-query")
            check(query_sts["spec"]["replicas"] == query_nodes, f"{query_nodes} query nodes")
            check("volumeClaimTemplates" not in query_sts["spec"], "query nodes hold no parts: no volume claims")
            check(query_sts["spec"]["serviceName"] == f"{RELEASE}-query-peers", "query nodes' DNS names")
            one(objects, "Service", f"{RELEASE}-query-peers")
            query_client = one(objects, "Service", f"{RELEASE}-query")
            labels = query_sts["spec"]["template"]["metadata"]["labels"]
            check(all(labels.get(k) == v for k, v in query_client["spec"]["selector"].items()),
                  "the query Service selects the query nodes")
            check(all(sts["spec"]["template"]["metadata"]["labels"].get(k) != v or k != "app.kubernetes.io/component"
                      for k, v in query_client["spec"]["selector"].items()), "and not the storage nodes")
            query = next(c for c in query_sts["spec"]["template"]["spec"]["containers"] if c["name"] == "tandem")
            check(flag(query, "role") == "query" and flag(query, "local-storage-bytes") is None, "--role=query")
            with tempfile.TemporaryDirectory() as tmp:
                query_config = run_check_config(binary, query_sts, query, Path(tmp))
            check("role: Query" in query_config, "tandem resolved the query role")
            check(quoted(f"{RELEASE}-query-0.{RELEASE}-query-peers.{NAMESPACE}.svc.cluster.local:9100") in query_config,
                  "a query node announces its own DNS name")
        else:
            check(not find(objects, "StatefulSet", f"{RELEASE}-query"), "no query nodes unless asked")
        monitor = values.get("serviceMonitor", {}).get("enabled", False)
        check(bool(find(objects, "ServiceMonitor")) == monitor, "ServiceMonitor only when enabled")
        print(f"ok   {name}: lint clean, {len(objects)} objects valid for Kubernetes {KUBE_VERSION}, "
              f"`tandem serve --check-config` accepts the node's command line")


def check_refusals():
    """Wrong values are refused at install, with a message that names the problem."""
    cases = [
        ({"replicaCount": "three"}, "replicaCount"),
        ({"etcd": {"replicaCount": 2}}, "replicaCount"),
        ({"defaults": {"insertQuorum": "most"}}, "insertQuorum"),
        ({"defaults": {"insertQuorumTimeoutMs": "30s"}}, "insertQuorumTimeoutMs"),
        ({"objectStore": {"pathStyle": "yes"}}, "pathStyle"),
        ({"etcd": {"endpoints": ["etcd:2379"]}}, "endpoints"),
        ({"replicas": 3}, "replicas"),
        ({"etcd": {"enabled": False}}, "tandem needs etcd"),
        ({"etcd": {"enabled": False, "endpoints": ["http://e:2379"], "tls": {"enabled": True, "existingSecret": "s"}}},
         "is not https://"),
        ({"drain": {"timeoutSeconds": 300}}, "must exceed drain.timeoutSeconds"),
        ({"minio": {"enabled": True}, "objectStore": {"endpoint": "http://s3:9000"}}, "minio.enabled"),
        ({"interserverTls": {"enabled": True}}, "interserverTls.existingSecret"),
        ({"tls": {"enabled": True}}, "tls.existingSecret"),
        ({"localStorageBytes": 1000}, "localStorageBytes needs an object store"),
        ({"queryNodes": {"replicaCount": 2}}, "queryNodes read every part from the bucket"),
        ({"localStorageBytes": "50G"}, "localStorageBytes"),
        ({"defaults": {"localReplicas": 2}}, "defaults.localReplicas"),
    ]
    for values, expected in cases:
        try:
            render(values)
        except helm.HelmError as e:
            check(expected in str(e), f"refusing {values}: the message should name {expected!r}: {e}")
            continue
        raise CheckFailed(f"the chart accepted {values}")
    print(f"ok   {len(cases)} wrong value sets refused, each naming the problem")


def check_values_documented():
    """helm/tandem/README.md's values table lists every key of values.yaml."""
    opaque = {"resources", "podSecurityContext", "securityContext"}

    def leaves(values, prefix=""):
        for key, value in values.items():
            if isinstance(value, dict) and value and key not in opaque:
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}"

    readme = (CHART / "README.md").read_text()
    documented = set(re.findall(r"^\| `([A-Za-z0-9_.]+)` \|", readme, re.MULTILINE))
    keys = set(leaves(yaml.safe_load((CHART / "values.yaml").read_text())))
    check(keys <= documented, f"values missing from helm/tandem/README.md: {sorted(keys - documented)}")
    check(documented <= keys, f"helm/tandem/README.md documents values that do not exist: {sorted(documented - keys)}")
    print(f"ok   the chart README documents all {len(keys)} values")


def check_image_matches_chart():
    """The Dockerfile (not built here: no container engine) agrees with the chart and the
    workspace: same unprivileged user, tandem as the entrypoint, the workspace's Rust version."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    user = values["podSecurityContext"]["runAsUser"]
    check(f"USER {user}:{user}" in dockerfile, f"the image runs as {user}, the chart's runAsUser")
    check('ENTRYPOINT ["/usr/local/bin/tandem"]' in dockerfile, "the chart's args follow the tandem entrypoint")
    rust = re.search(r'^rust-version = "([0-9.]+)"', (ROOT / "Cargo.toml").read_text(), re.MULTILINE).group(1)
    check(f"FROM rust:{rust}-" in dockerfile, f"the image builds with Rust {rust}, the workspace's rust-version")
    print(f"ok   the Dockerfile matches the chart (user {user}, tandem entrypoint) and Rust {rust}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tandem", required=True, help="the tandem binary")
    args = parser.parse_args()
    try:
        check_value_sets(args.tandem)
        check_refusals()
        check_values_documented()
        check_image_matches_chart()
    except CheckFailed as e:
        print(f"FAIL {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
