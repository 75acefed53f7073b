"""Serving on Ray Serve: teacher and student behind a canary router.

    schemas.py     HTTP request/response models and their bounds (pydantic)
    routing.py     pure routing arithmetic: sticky buckets, weighted coin, divergence, cost
    classifier.py  a registry bundle as a classifier: verified files, its tokenizer, ONNX Runtime
    model.py       ModelDeployment: any bundle by id, @serve.batch, warm-up, real health check
    answer.py      ModelAnswer: what a model call returns; the HTTP predictions; splitting
    stream.py      the stream lane: router -> model replica calls as frames over TCP (Serve's
                   handle discovers the lanes and takes any call whose lane breaks)
    autoscaling.py Serve's queue-length policy with the lanes' in-flight calls added
    rollout_deployment.py  RolloutDeployment: rollout.controller as a one-replica deployment,
                   the one controller routers poll and the admin API drives
    router_core.py RouterCore: the router's logic without Ray (choose, call, fail over, shadow,
                   observations); the Ray shell and bench/simulation.py both drive it
    router_sink.py RouterMetricsSink, what the core records, and RecordingMetrics, its in-memory fake
    router.py      Router: the ingress shell over RouterCore, lean Starlette hot path
    admin.py       bearer-token checks: the admin API's token, and the feedback token
    admin_api.py   the admin routes under /admin/rollout (FastAPI: typed bodies and answers, OpenAPI)
    admin_client.py AdminClient: those routes over HTTP, typed both ways (CLI, demo, drills, tests);
                   FeedbackClient: POST /v1/feedback
    metrics.py     the metrics facade over ray.serve.metrics (names in its docstring)
    config.py      typed settings per deployment
    app.py         app_builder(AppArgs) for `serve run` / `serve deploy`
    errors.py      ServingError and its subclasses
    cli.py         the `kdcanary` command (`kdcanary serve` runs the app locally)
    rollout_cli.py `kdcanary rollout status|start|...`: AdminClient for operators
    limits.py      TokenBucket: the router's per-replica request rate limit
    drills.py      fault drills under load (replica kills, a full state store): tests and bench
    demo/          `kdcanary demo`: three live rollouts with labels coming back, a live view, a report

Imports run one way: app -> router -> model -> stream -> answer, and model -> classifier ->
routing -> schemas; serving may import
compression.registry and rollout's evidence/views types, never the reverse.
"""
