"""A Kubernetes API emulator for tests: kmock's `KubernetesEmulator` made to behave like kube-apiserver.

No kube-apiserver can be installed on the test machines, so this package serves the parts of the
API that the operator, the `kubernetes` client, kopf and kubectl use, with the real semantics:

* metadata: uid, creationTimestamp, generateName, `generation` (bumped on spec changes only),
  `resourceVersion` from one global counter on every write; 201 on create, 409 AlreadyExists,
  409 Conflict on stale resourceVersions (PUT or patch), 404 `Status` objects (reason NotFound);
* PUT, merge patch, strategic merge (merge by `name`/key for built-in lists; plain merge for
  custom resources), JSON patch (a failed `test` answers 422), server-side apply (creates when
  missing; the applied object is merged, field ownership is not tracked), DELETE,
  DELETE-collection with selectors;
* watches that miss nothing (listing/replay and subscription happen in one step), honour
  `resourceVersion`, `labelSelector` (=, ==, !=, in, notin, exists, !exists), `fieldSelector`
  (metadata.name, metadata.namespace, ...), `timeoutSeconds`; an object that stops matching a
  selector arrives as DELETED. Choice: a `resourceVersion` older than the retained history
  (100,000 events) gets 200 + an ERROR event with a 410 `Expired` Status, as the real server
  does; clients relist. BOOKMARK only ends the initial events of `sendInitialEvents=true`
  (the WatchList protocol); no periodic bookmarks;
* `/status` subresources (CRDs that declare one, Job, Deployment, Pod, Service, PVC, Namespace):
  status writes change only `.status` and never `generation`; the main resource ignores `.status`;
* finalizers (deletionTimestamp, then deletion once they are gone), owner-reference garbage
  collection (background, cascading; `propagationPolicy: Orphan` honoured), namespace deletion
  removes the namespace's contents;
* discovery for core and groups (`/api`, `/api/v1`, `/apis`, `/apis/<group>/<version>`) with
  namespaced/verbs/kind/shortNames/subresources; created CustomResourceDefinitions register
  their kinds at once (`kubectl apply -f crds/` works); `Table` output with a CRD's printer
  columns for `kubectl get`;
* custom resources validated against their CRD's openAPIV3Schema (jsonschema; unknown fields
  rejected — fieldValidation=Ignore or Warn, which
  `kubectl apply --validate=false` sends, prunes them instead; a real server's default is Warn,
  here it is Strict — defaults applied) and `x-kubernetes-validations` CEL rules (celpy, plus
  `isSorted`, `lowerAscii`, `upperAscii`, `trim`; unchanged values are not re-checked on updates,
  like the server's validation ratcheting): 422 `Invalid` naming the field — see
  `tests.k8s.validation.validate_against_crd`;
* `pods/<name>/log` answers the text a test sets with `K8s.set_pod_log(ns, name, text)` (or, for
  the standalone server, `curl -X PUT --data-binary @log.txt URL/emulator/logs/NS/POD`).

Not emulated: controllers (no Job or Deployment ever runs — tests play them with
`K8s.patch_status`), admission webhooks, RBAC/authentication (any token is accepted), OpenAPI
(`kubectl apply` needs `--validate=false`), `dryRun` (refused with 400), pagination (`limit` is
ignored and everything is returned), foreground deletion (treated as background), protobuf
and CBOR bodies (415: imperative `kubectl create job ...` sends protobuf; `kubectl apply`/
`create -f` send JSON and work), managedFields. `GET /emulator/stats` counts requests per verb and
resource (the operator benchmark reports API calls per Model from it).

Standalone, serving in the foreground on 127.0.0.1 (Ctrl-C or SIGTERM stops it)::

    .venv/bin/python -m tests.k8s --port 8765 --kubeconfig .work/kubeconfig \\
        [--crd crds/models.modelyard.io.yaml]      # default: that file, when it exists
    KUBECONFIG=.work/kubeconfig .venv/bin/kubectl get ns
    KUBECONFIG=.work/kubeconfig .venv/bin/kubectl apply --validate=false -f examples/llama-8b.yaml
    KUBECONFIG=.work/kubeconfig .venv/bin/modelyard operator

In pytest (fixtures from tests/k8s/fixtures.py, re-exported by tests/conftest.py)::

    def test_something(k8s, namespace, kubeconfig):
        from tests.k8s.operator_thread import run_operator
        with run_operator(kubeconfig):                 # modelyard.operator.handlers, own thread
            k8s.create({...Model...})
            job = k8s.wait_for(lambda: k8s.get("Job", namespace, "m-download"))
            k8s.patch_status("Job", namespace, "m-download", {"succeeded": 1})

In code: `EmulatorThread(crds=[path]).start()` → `.url`, `.write_kubeconfig(path)`, `.call(fn)`.
"""
