"""The cluster deploy step: the in-cluster data services an OpenIM v3.8 install needs.

    spec.py       what to deploy (stores, images, sizes, adoption), names and ports
    manifests.py  typed builders (the kubernetes client's pydantic models) for each service
    kube.py       one API client, server-side apply, permission checks, readable errors
    secretref.py  ``${k8s:namespace/secret#key}`` references, resolved through the API
    waiting.py    readiness: StatefulSets ready, PVCs Bound, init Jobs complete, adoption
    endpoints.py  the plan's targets: Service DNS names and ``${k8s:…}`` references
    job.py        ``job render``: run + verify inside the cluster as a Job
    discover.py   a standalone install's compose file, .env, IMENV_* and config files

Nothing here prints; the CLI modules render what these return.
"""
