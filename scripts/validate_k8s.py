#!/usr/bin/env python3
"""Offline validation of the Kubernetes manifests in deploy/kubernetes/.

Each kustomization (default: deploy/kubernetes and deploy/kubernetes/cpu) is built here
the way `kustomize build` does for the features they use (resources: files and
directories with their own kustomization; images: newName/newTag), and anything else in
a kustomization is an error, so nothing is left out unseen. Then every object is checked:

* built-in kinds with kubernetes-validate (the Kubernetes OpenAPI schemas it ships, no
  network), strict (unknown fields are errors), against each version in K8S_VERSIONS;
* InferencePool and ServiceMonitor against the CRDs committed in deploy/kubernetes/schemas/
  (see SOURCES.md there), with unknown fields made errors the same way; the CRDs' CEL
  rules (x-kubernetes-validations) are not evaluated;
* the references between them: selectors that match the pods, named ports that exist,
  the HPA's target, the volume's claim, and a termination grace period longer than
  GRACEFUL_TERMINATION_TIMEOUT plus the preStop pause.

Every YAML file under deploy/kubernetes/ (schemas/ aside) must be listed by a
kustomization. Where `kubectl` is on the PATH, `kubectl kustomize` must build the same
objects (said in the output either way). Ends with 'k8s: N passed, N failed'; exits 1 on
any failure.
"""

import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "kubernetes"
SCHEMAS = DEPLOY / "schemas"
# The oldest version the manifests are for (preStop `sleep` is on by default from 1.30)
# and the newest kubernetes-validate knows.
K8S_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "images"}
# wick serve's default --graceful-termination-timeout.
DEFAULT_GRACEFUL_TERMINATION = 90

passed = 0
failed = 0
WICK_ENV = set()


def check(ok, what):
    global passed, failed
    if ok:
        passed += 1
        print(f"ok   {what}")
    else:
        failed += 1
        print(f"FAIL {what}")
    return ok


def fail(what):
    check(False, what)


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def build(directory, seen_files):
    """The objects `kustomize build directory` gives, for the features used here."""
    kfile = directory / "kustomization.yaml"
    if not check(kfile.is_file(), f"{rel(directory)}: has a kustomization.yaml"):
        return []
    seen_files.add(kfile.resolve())
    docs = load_docs(kfile)
    k = docs[0] if docs else {}
    check(
        k.get("kind") == "Kustomization"
        and k.get("apiVersion") == "kustomize.config.k8s.io/v1beta1",
        f"{rel(kfile)}: a kustomize.config.k8s.io/v1beta1 Kustomization",
    )
    unknown = set(k) - KUSTOMIZATION_KEYS
    check(not unknown, f"{rel(kfile)}: only fields this builder applies ({sorted(unknown)} left)")
    objects = []
    for r in k.get("resources", []):
        path = (directory / r).resolve()
        if not check(path.exists(), f"{rel(kfile)}: resource {r} exists"):
            continue
        if path.is_dir():
            objects += build(path, seen_files)
        else:
            seen_files.add(path)
            for d in load_docs(path):
                d.setdefault("metadata", {})
                d["_file"] = rel(path)
                objects.append(d)
    for image in k.get("images", []):
        used = False
        for c in containers(objects):
            name, _, tag = c.get("image", "").partition(":")
            if name == image["name"]:
                used = True
                c["image"] = image.get("newName", name) + ":" + image.get("newTag", tag or "latest")
        check(used, f"{rel(kfile)}: image {image['name']} is used by a container")
    return objects


def containers(objects):
    for o in objects:
        spec = o.get("spec", {}).get("template", {}).get("spec", {})
        yield from spec.get("containers", [])


def rel(p):
    return str(Path(p).resolve().relative_to(ROOT))


def strict_schema(schema):
    """The CRD's schema with unknown fields as errors (the API server drops them)."""
    s = copy.deepcopy(schema)

    def walk(node):
        if not isinstance(node, dict):
            return
        props = node.get("properties")
        if (
            props is not None
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
        for v in (props or {}).values():
            walk(v)
        for key in ("items", "additionalProperties"):
            walk(node.get(key))
        for key in ("allOf", "anyOf", "oneOf"):
            for v in node.get(key, []):
                walk(v)

    walk(s)
    return s


def crd_schemas():
    """(apiVersion, kind) -> (schema, scope) from the committed CRDs."""
    out = {}
    for path in sorted(SCHEMAS.glob("*.yaml")):
        for crd in load_docs(path):
            spec = crd["spec"]
            for v in spec["versions"]:
                if v.get("served"):
                    key = (f"{spec['group']}/{v['name']}", spec["names"]["kind"])
                    out[key] = (strict_schema(v["schema"]["openAPIV3Schema"]), spec["scope"])
    return out


def validate_object(o, crds):
    what = f"{o['_file']}: {o.get('kind')} {o['metadata'].get('name')}"
    body = {k: v for k, v in o.items() if k != "_file"}
    key = (o.get("apiVersion"), o.get("kind"))
    if key in crds:
        schema, scope = crds[key]
        errors = sorted(
            jsonschema.Draft7Validator(schema).iter_errors(body), key=lambda e: list(e.path)
        )
        check(
            not errors,
            f"{what} against the {key[0]} CRD schema"
            + "".join(f"\n       {list(e.path)}: {e.message}" for e in errors),
        )
        check(scope == "Namespaced" and "namespace" not in o["metadata"], f"{what}: namespaced, no namespace pinned")
        return
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(body, version, strict=True)
            check(True, f"{what} against Kubernetes {version}")
        except kubernetes_validate.ValidationError as e:
            fail(f"{what} against Kubernetes {version}: {list(e.path)}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            fail(f"{what}: no schema for {key} in Kubernetes {version} ({e})")


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def env_of(container, name, default=None):
    for e in container.get("env", []):
        if e.get("name") == name:
            return e.get("value", default)
    return default


def wick_env_names():
    """The environment variables `wick serve` reads: its launcher's and the hub's."""
    launcher = (ROOT / "src" / "config" / "launcher.rs").read_text()
    hub = (ROOT / "src" / "hub" / "mod.rs").read_text()
    return set(re.findall(r'env = "([A-Z0-9_]+)"', launcher)) | set(
        re.findall(r'env\("([A-Z0-9_]+)"\)', hub)
    )


def cross_check(name, objects):
    by_kind = {}
    for o in objects:
        by_kind.setdefault(o["kind"], {})[o["metadata"]["name"]] = o
    keys = [(o["kind"], o["metadata"]["name"]) for o in objects]
    check(len(keys) == len(set(keys)), f"{name}: no object twice")
    deployments = by_kind.get("Deployment", {})
    check(len(deployments) == 1, f"{name}: one Deployment")
    for dname, d in deployments.items():
        tmpl = d["spec"]["template"]
        pod_labels = tmpl["metadata"].get("labels", {})
        pod = tmpl["spec"]
        ports = {p["name"]: p["containerPort"] for c in pod["containers"] for p in c.get("ports", [])}
        check(
            matches(d["spec"]["selector"].get("matchLabels"), pod_labels),
            f"{name}: Deployment {dname} selects its own pods",
        )
        for c in pod["containers"]:
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                p = c.get(probe)
                if not check(p is not None, f"{name}: container {c['name']} has a {probe}"):
                    continue
                get = p.get("httpGet", {})
                check(
                    get.get("path") == "/health" and get.get("port") in ports,
                    f"{name}: {probe} is GET /health on a named container port",
                )
            unknown = [e["name"] for e in c.get("env", []) if e["name"] not in WICK_ENV]
            check(not unknown, f"{name}: every env variable is one wick serve reads (not: {unknown})")
            grace = int(env_of(c, "GRACEFUL_TERMINATION_TIMEOUT", DEFAULT_GRACEFUL_TERMINATION))
            pause = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
            check(
                pod.get("terminationGracePeriodSeconds", 30) > grace + pause,
                f"{name}: terminationGracePeriodSeconds above GRACEFUL_TERMINATION_TIMEOUT "
                f"({grace}) + preStop ({pause})",
            )
            live = c.get("livenessProbe", {})
            check(
                live.get("timeoutSeconds", 1) >= 10 and live.get("failureThreshold", 3) * live.get("periodSeconds", 10) >= 120,
                f"{name}: the livenessProbe tolerates a busy server (>= 10 s a try, >= 2 min of failures)",
            )
            check(
                env_of(c, "PORT") is None or int(env_of(c, "PORT")) in ports.values(),
                f"{name}: PORT is a container port",
            )
        for v in pod.get("volumes", []):
            claim = v.get("persistentVolumeClaim", {}).get("claimName")
            if claim:
                check(
                    claim in by_kind.get("PersistentVolumeClaim", {}),
                    f"{name}: the claim {claim} is in the build",
                )
        for sname, s in by_kind.get("Service", {}).items():
            check(matches(s["spec"]["selector"], pod_labels), f"{name}: Service {sname} selects the pods")
            for p in s["spec"]["ports"]:
                check(p.get("targetPort") in ports, f"{name}: Service {sname} targets a named container port")
            for mname, m in by_kind.get("ServiceMonitor", {}).items():
                check(
                    matches(m["spec"]["selector"].get("matchLabels"), s["metadata"].get("labels", {})),
                    f"{name}: ServiceMonitor {mname} selects Service {sname}",
                )
                service_ports = {p.get("name") for p in s["spec"]["ports"]}
                for e in m["spec"]["endpoints"]:
                    check(
                        e.get("port") in service_ports and e.get("path") == "/metrics",
                        f"{name}: ServiceMonitor {mname} scrapes /metrics on a Service port",
                    )
        for pname, p in by_kind.get("InferencePool", {}).items():
            check(
                matches(p["spec"].get("selector", {}).get("matchLabels"), pod_labels),
                f"{name}: InferencePool {pname} selects the pods",
            )
            check(
                all(t.get("number") in ports.values() for t in p["spec"].get("targetPorts", [{}])),
                f"{name}: InferencePool {pname} targets container ports",
            )
            ref = p["spec"].get("endpointPickerRef", {})
            check(
                ref.get("kind", "Service") != "Service" or "port" in ref,
                f"{name}: InferencePool {pname}'s endpointPickerRef has a port (the CRD's CEL rule)",
            )
    for hname, h in by_kind.get("HorizontalPodAutoscaler", {}).items():
        t = h["spec"]["scaleTargetRef"]
        check(
            t["kind"] == "Deployment" and t["name"] in deployments,
            f"{name}: HPA {hname} scales the Deployment",
        )


def kubectl_build(directory):
    out = subprocess.run(
        ["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=120
    )
    if out.returncode != 0:
        return None, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d is not None], ""


def canonical(objects):
    return sorted(
        json.dumps({k: v for k, v in o.items() if k != "_file"}, sort_keys=True) for o in objects
    )


def main(argv):
    dirs = [Path(a).resolve() for a in argv] or [DEPLOY, DEPLOY / "cpu"]
    crds = crd_schemas()
    WICK_ENV.update(wick_env_names())
    check({"MODEL_ID", "PORT", "HF_TOKEN", "WICK_CACHE"} <= WICK_ENV, "wick serve's env names are found in the source")
    check(
        ("inference.networking.k8s.io/v1", "InferencePool") in crds
        and ("monitoring.coreos.com/v1", "ServiceMonitor") in crds,
        "the InferencePool and ServiceMonitor CRD schemas are committed",
    )
    seen_files = set()
    kubectl = shutil.which("kubectl")
    for d in dirs:
        print(f"== {rel(d)}")
        objects = build(d, seen_files)
        check(bool(objects), f"{rel(d)}: builds to objects")
        for o in objects:
            validate_object(o, crds)
        cross_check(rel(d), objects)
        if kubectl:
            theirs, err = kubectl_build(d)
            if theirs is None:
                fail(f"{rel(d)}: kubectl kustomize builds it: {err.strip()}")
            else:
                check(canonical(theirs) == canonical(objects), f"{rel(d)}: kubectl kustomize builds the same objects")
        else:
            print(f"note {rel(d)}: no kubectl on the PATH, so no cross-check with kubectl kustomize")
    if not argv:
        listed = {
            p.resolve()
            for p in DEPLOY.rglob("*.yaml")
            if SCHEMAS not in p.resolve().parents
        }
        unlisted = sorted(rel(p) for p in listed - seen_files)
        check(not unlisted, f"every manifest is in a kustomization (not: {unlisted})")
    print(f"k8s: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
