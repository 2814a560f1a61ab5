#!/usr/bin/env python3
"""Validates deploy/ without a Docker engine or a cluster.

1. Every YAML file parses.
2. Kubernetes manifests pass `kubernetes-validate --strict` (bundled schemas, no cluster).
3. Every file a kustomization names exists, and every patch targets a resource of the base.
4. Every environment variable a manifest or the compose file gives a service (or the console)
   is real: the binary's `check-config` loads it with the same settings code as production
   (unknown keys and bad values are errors), using the example ConfigMap/Secret values.
5. The Dockerfile copies the five binaries that exist in the workspace.

Usage: python3 deploy/validate.py <dir with allocator-svc, call-gateway-svc and cco-console binaries>
"""

import os
import pathlib
import subprocess
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent
BIN = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/debug").resolve()
KNOWN_PREFIXES = ("ALLOCATOR__", "GATEWAY__", "CONSOLE__")
KNOWN_PLAIN = {"HEALTH_PORT", "RUST_LOG"}
errors = []


def fail(msg):
    errors.append(msg)
    print(f"FAIL {msg}")


def docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


yaml_files = sorted(p for p in ROOT.rglob("*.y*ml"))
parsed = {}
for p in yaml_files:
    try:
        parsed[p] = docs(p)
    except yaml.YAMLError as e:
        fail(f"{p.relative_to(ROOT)}: does not parse: {e}")
print(f"ok   {len(parsed)} YAML files parse")

# 2. Schemas.
k8s_files = [p for p in parsed if "k8s" in p.parts and p.name != "kustomization.yaml"]
patches = {ROOT / "k8s/overlays/example/config-patch.yaml"}
schema_files = [str(p) for p in k8s_files if p not in patches]
r = subprocess.run(["kubernetes-validate", "--strict", "--quiet", *schema_files], capture_output=True, text=True)
if r.returncode != 0:
    fail(f"kubernetes-validate:\n{r.stdout}{r.stderr}")
else:
    print(f"ok   {len(schema_files)} Kubernetes manifests match the schemas (strict)")

# 3. Kustomizations.
base_resources = {}
for p, ds in parsed.items():
    if p.name != "kustomization.yaml":
        continue
    k = ds[0]
    for ref in k.get("resources", []) + [x["path"] for x in k.get("patches", [])]:
        if not (p.parent / ref).exists():
            fail(f"{p.relative_to(ROOT)}: names {ref}, which does not exist")
for p in k8s_files:
    for d in parsed[p]:
        if "base" in p.parts:
            base_resources[(d["kind"], d["metadata"]["name"])] = d
for patch in patches:
    for d in parsed[patch]:
        if (d["kind"], d["metadata"]["name"]) not in base_resources:
            fail(f"{patch.relative_to(ROOT)}: patches {d['kind']}/{d['metadata']['name']}, not in the base")
print("ok   kustomizations reference existing files and resources")

# 4. Environment variables, resolved and checked by the binaries themselves.
def sources(kind, name):
    d = base_resources.get((kind, name))
    if d is None:
        fail(f"{kind}/{name} is referenced but not defined in the base")
        return {}
    return dict(d.get("data") or {}) | dict(d.get("stringData") or {})


def check(where, command, env):
    for name in env:
        if not (name.startswith(KNOWN_PREFIXES) or name in KNOWN_PLAIN):
            fail(f"{where}: sets {name}, which no service reads")
    binary = command[0] if command[0] in ("allocator-svc", "call-gateway-svc", "cco-console") else None
    if binary is None:
        return 0
    if not (BIN / binary).exists():
        fail(f"{where}: cannot check: {BIN / binary} is not built")
        return 0
    run_env = {"PATH": os.environ.get("PATH", "")} | {k: str(v) for k, v in env.items()}
    r = subprocess.run([str(BIN / binary), "check-config"], env=run_env, capture_output=True, text=True, cwd="/tmp")
    if r.returncode != 0:
        fail(f"{where}: {binary} rejects its environment: {r.stderr.strip()}")
    return 1


checked = 0
for p in k8s_files:
    for d in parsed[p]:
        spec = d.get("spec", {})
        pod = spec.get("template", {}).get("spec") if d["kind"] in ("Deployment", "Job") else None
        if not pod:
            continue
        for c in pod.get("initContainers", []) + pod.get("containers", []):
            env = {}
            for ef in c.get("envFrom", []):
                if "configMapRef" in ef:
                    env |= sources("ConfigMap", ef["configMapRef"]["name"])
                if "secretRef" in ef:
                    env |= sources("Secret", ef["secretRef"]["name"])
            for e in c.get("env", []):
                if "value" in e:
                    env[e["name"]] = e["value"]
                else:
                    ref = e["valueFrom"].get("configMapKeyRef") or e["valueFrom"].get("secretKeyRef")
                    kind = "ConfigMap" if "configMapKeyRef" in e["valueFrom"] else "Secret"
                    env[e["name"]] = sources(kind, ref["name"]).get(ref["key"], "")
            checked += check(f"{p.relative_to(ROOT)} {d['kind']}/{d['metadata']['name']}/{c['name']}", c.get("args") or c.get("command"), env)

compose = parsed[ROOT / "docker-compose.yml"][0]
for name, svc in compose["services"].items():
    if "cco-infinity" not in svc.get("image", ""):
        continue
    checked += check(f"docker-compose.yml service {name}", svc["command"], svc.get("environment") or {})
print(f"ok   {checked} containers' environments accepted by the binaries' own settings code")

# 5. The Dockerfile builds and copies binaries that exist.
dockerfile = (ROOT / "Dockerfile").read_text()
for b in ["allocator-svc", "call-gateway-svc", "cco-console", "infinity-sim", "cco"]:
    if f"target/release/{b}" not in dockerfile:
        fail(f"Dockerfile does not copy {b}")
    if not (BIN / b).exists():
        fail(f"binary {b} is not built by the workspace")
print("ok   Dockerfile copies the workspace's five binaries")

if errors:
    print(f"{len(errors)} problem(s)")
    sys.exit(1)
print("deploy/ is valid (docker build and a live cluster were not available to test)")
