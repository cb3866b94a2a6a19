#!/usr/bin/env python3
"""L1 of the Kubernetes runtime's test ladder (design §16.6): every YAML document under the
given paths must pass `kubernetes-validate --strict` for Kubernetes 1.33.0 (offline schemas:
no unknown, misspelt or mis-typed field, required fields present). Proves schema validity only,
not admission or defaulting.

Before the real documents, a control: a Pod with a misspelt field and one missing a required
field must both fail, so that a validator that passes everything fails this check.

Usage: validate.py PATH... (files, or directories of *.yaml). Exit 0 when all pass.
"""

import pathlib
import sys

import kubernetes_validate
import yaml

VERSION = "1.33.0"


class Loader(yaml.SafeLoader):
    """YAML as Kubernetes reads it (sigs.k8s.io/yaml into JSON): an unquoted RFC 3339 value
    such as the `expires-at` annotation is a string, not a timestamp."""


Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def check(doc):
    """None when valid, else the validator's complaint."""
    try:
        kubernetes_validate.validate(doc, VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return f"{'.'.join(str(p) for p in e.path)}: {e.message}"
    return None


def control():
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "control"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }
    assert check(pod) is None, f"a minimal valid Pod failed: {check(pod)}"
    misspelt = {**pod, "spec": {"containers": [{"name": "c", "image": "busybox", "comand": ["x"]}]}}
    assert check(misspelt) is not None, "strict mode let a misspelt field through"
    missing = {
        **pod,
        "spec": {
            "containers": [{"name": "c", "image": "busybox", "volumeMounts": [{"name": "v"}]}],
            "volumes": [{"name": "v", "emptyDir": {}}],
        },
    }
    assert check(missing) is not None, "a volumeMount without mountPath passed"


def main(paths):
    control()
    files = []
    for p in map(pathlib.Path, paths):
        files += sorted(p.glob("*.yaml")) if p.is_dir() else [p]
    if not files:
        sys.exit("validate.py: no YAML documents found")
    failures = 0
    documents = 0
    for f in files:
        for doc in yaml.load_all(f.read_text(), Loader=Loader):
            if doc is None:
                continue
            documents += 1
            what = f"{f}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            problem = check(doc)
            if problem:
                failures += 1
                print(f"FAIL {what}: {problem}")
            else:
                print(f"ok   {what}")
    print(f"{documents} documents, {failures} failed (kubernetes-validate --strict, Kubernetes {VERSION})")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main(sys.argv[1:])
