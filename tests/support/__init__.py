"""The test kit: a real registry, test images, a fixture server and a proxy.

Plain modules with no pytest imports, shared by the test suite (``tests/conftest.py``) and
the benchmark harness (``benchmarks/``). Import them as ``tests.support.<module>`` with the
repository root on ``sys.path`` (``tests`` is a namespace package: it has no
``__init__.py``; this folder is a regular package)::

    import sys, pathlib
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the repo root
    from tests.support import images, registry, servers

Modules:

- ``registry``: ``run_registry(auth=..., tls=...)`` runs docker-registry on 127.0.0.1.
- ``tokens``: ``run_token_server(...)``, the bearer token server ``auth="token"`` uses.
- ``images``: deterministic layers, configs, manifests, indexes; ``push``; broken inputs.
- ``servers``: ``run_fixture_server()`` (programmed replies) and ``run_proxy(upstream)``
  (counts requests, throttles, adds latency, injects replies).
- ``client``: a small sync httpx client that authenticates like docker (for setup/checks).
- ``network``: a simulated network for the HTTP pool (hosts at "public" and "internal"
  addresses served from loopback) and a DNS whose answers change (rebinding).
"""
