"""``python -m harness fixtures build PLAN | list | clean``."""

from __future__ import annotations

import argparse
import json

from harness.errors import HarnessError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    b = sub.add_parser("build", help="build the missing nodes of a plan into the cache")
    b.add_argument("plan", help="plan TOML file, e.g. fixtures/plans/tiny.toml")
    b.add_argument("--only", action="append", metavar="NODE", help="build only this node (and its ancestors); repeatable")
    b.add_argument("--rebuild", action="store_true", help="retrain the --only nodes, or every trained node")
    b.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    b.add_argument("--jobs", type=int, default=None,
                   help="nodes trained at once (default: 1 on the CPU; on CUDA as many as the GPUs' memory holds)")
    b.add_argument("--devices", default=None, metavar="IDS",
                   help="device slots to spread nodes over, e.g. 0,1 (default: $HARNESS_DEVICES, else every "
                        "visible GPU); one worker pool per slot, pinned with CUDA_VISIBLE_DEVICES")
    b.add_argument("--gpus", type=int, default=None, metavar="N",
                   help="train each node over N GPUs (DDP through accelerate launch; batch_size stays the global "
                        "batch; N > 1 is part of the node key)")
    b.add_argument("--executor", choices=("embedded", "ray"), default=None,
                   help="who trains the nodes: embedded (the harness's worker pools, default) or ray (one Ray task "
                        "per node; $HARNESS_EXECUTOR)")
    b.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="Ray cluster to join, e.g. HEAD:6379 (default: $HARNESS_RAY_ADDRESS, else $RAY_ADDRESS or a "
                        "local Ray instance, started if none runs)")
    b.add_argument("--ray-gpu-fraction", type=float, default=None, metavar="F",
                   help="share of one GPU each single-GPU node asks Ray for (default: 1 / the nodes one GPU's "
                        "memory holds); a node with gpus = N takes N whole GPUs")
    b.add_argument("--variant", default=None, help="apply the plan's [variants.NAME] table")
    b.add_argument("--seed", type=int, default=None, help="override the plan's training seed")
    b.add_argument("--base", default=None, metavar="MODEL",
                   help="override the plan's base: a hub id[@revision], a model folder, a .gguf file or a folder holding one")
    b.add_argument("--no-preflight", action="store_true",
                   help="train even when the pre-flight (label audit, stop tokens) finds an error")
    b.add_argument("--fixtures-dir", default=None, help="cache folder (default .fixtures/ or $HARNESS_FIXTURES_DIR)")
    b.add_argument("--quiet", action="store_true", help="no progress bars")
    ls = sub.add_parser("list", help="list the cached nodes")
    ls.add_argument("--fixtures-dir", default=None)
    ls.add_argument("--json", action="store_true", help="one JSON object per node")
    c = sub.add_parser("clean", help="delete the cache (or only leftover temp folders)")
    c.add_argument("--fixtures-dir", default=None)
    c.add_argument("--tmp-only", action="store_true", help="only remove temp folders of interrupted builds")


def run(args: argparse.Namespace) -> int:
    from harness.config import from_env
    from harness.train.store import Store

    config = from_env()  # the edge: every HARNESS_* variable this command uses is read here, once
    fixtures_dir = args.fixtures_dir or config.fixtures_dir
    if args.action == "build":
        from harness.train import build, load_plan

        executor = args.executor or config.executor or "embedded"
        ray_address = args.ray_address or config.ray_address
        if executor == "ray" and config.devices:
            raise HarnessError(f"$HARNESS_DEVICES={config.devices!r} picks the embedded executor's device slots; "
                               f"with --executor ray, Ray places the nodes: unset it")
        if args.ray_gpu_fraction is not None and executor != "ray":
            raise HarnessError("--ray-gpu-fraction was given, but the executor is embedded; add --executor ray")
        from harness.train.ray_executor import check_executor

        check_executor(executor, ray_address)  # before the plan: a missing Ray is the one error
        plan = load_plan(args.plan).configured(config)  # its data folder and $HARNESS_GGUF_DIR
        if args.variant:
            plan = plan.variant(args.variant)
        if args.seed is not None:
            plan = plan.with_seed(args.seed)
        if args.base:
            plan = plan.with_base(args.base)
        if args.gpus is not None:
            from harness.train.distributed import with_gpus

            plan = with_gpus(plan, args.gpus)
        for name in args.only or []:
            plan.node(name)
        devices = args.devices
        if devices is None and config.devices:
            from harness.train.gpus import parse_devices

            devices = parse_devices(config.devices, "$HARNESS_DEVICES")
        graph = build(plan, fixtures_dir=fixtures_dir, device=args.device, only=args.only,
                      rebuild=args.rebuild, progress=not args.quiet, jobs=args.jobs,
                      preflight=not args.no_preflight, devices=devices, executor=executor,
                      ray_address=ray_address, gpu_fraction=args.ray_gpu_fraction)
        print(f"trained {len(graph.trained)} node(s)" + (f": {', '.join(graph.trained)}" if graph.trained else ""))
        timeline = graph.describe_timeline()
        if timeline:
            print(timeline)
        for name in graph.names:
            if graph.is_built(name):
                print(f"{name:16s} {graph.key(name)[:16]}  {graph.path(name)}")
        return 0
    store = Store(fixtures_dir)
    if args.action == "list":
        n = 0
        for path, meta in store.entries():
            n += 1
            if args.json:
                print(json.dumps({"path": str(path), **{k: meta.get(k) for k in
                                  ("node", "plan", "variant", "key", "device", "wall_seconds")}}))
            else:
                print(f"{meta.get('node', '?'):16s} {meta.get('plan', '?'):10s} {meta.get('device', '?'):5s} "
                      f"{meta.get('wall_seconds', 0):8.1f}s  {path}")
        if not args.json:
            print(f"{n} node(s) in {store.root}")
        return 0
    if args.action == "clean":
        n = store.clean(tmp_only=args.tmp_only)
        print(f"removed {n} folder(s) from {store.root}")
        return 0
    raise HarnessError(f"unknown action {args.action!r}")
