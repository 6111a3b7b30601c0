"""``pft``: run the pipeline locally from its manifests, check a config, regenerate the embedded data."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from private_finetuning.config import PipelineConfig, load_config
from private_finetuning.deploy.local_runner.runtimes import RUNTIMES
from private_finetuning.errors import PipelineError


def _repo_root() -> Path:
    """The checkout holding k8s/ and components/: the current folder or one of its parents."""
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "k8s").is_dir() and (folder / "components").is_dir():
            return folder
    raise PipelineError(f"{here}: not inside a private-fine-tuning checkout (no k8s/ and components/ found)")


def _cmd_run(args: argparse.Namespace) -> int:
    from private_finetuning.deploy.local_runner import run_pipeline
    from private_finetuning.deploy.local_runner.scheduling import Node

    repo = _repo_root()
    overlay = args.overlay or repo / "k8s" / "overlays" / "cpu"
    # Fail here, before any stage starts, if the file is invalid.
    config = load_config(args.config) if args.config is not None else None
    question, note = first_question(args.ask, config)
    if note and args.then != "exit":
        print(note, flush=True)
    node = Node.this_machine(args.node_cpus, args.node_memory)
    ok = run_pipeline(repo, overlay.resolve(), args.state_dir.resolve(), args.config, args.only, args.then,
                      question, engine=args.engine, node=node)
    return 0 if ok else 1


def first_question(ask: str | None, config: PipelineConfig | None) -> tuple[str, str | None]:
    """The question ``pft run`` asks the server, and a note when it is the sample question about data the run does
    not train on (a user's own dataset): asking it one of theirs takes ``--ask``."""
    from private_finetuning.deploy.local_runner.pipeline import SEED_QUESTION

    if ask is not None:
        return ask, None
    if config is not None and config.dataset.source.type != "embedded":
        return SEED_QUESTION, (f"pft run asks the server {SEED_QUESTION!r}, a question about the embedded AcmeHotels "
                               "data, and this run trains on your dataset: pass --ask 'a question about your data' to "
                               "have it ask one of yours")
    return SEED_QUESTION, None


def _cmd_kubeflow(args: argparse.Namespace) -> int:
    from private_finetuning.deploy.kubeflow import compile_pipeline

    overlay = args.overlay or _repo_root() / "k8s" / "overlays" / "cpu"
    print(compile_pipeline(overlay.resolve(), args.output))
    return 0


def _cmd_promote(args: argparse.Namespace) -> int:
    from private_finetuning.artifacts import promotion
    from private_finetuning.artifacts.store import ADAPTER, Artifact, open_artifact, verify

    volume = args.fine_tuned
    if args.version:
        path = volume / ADAPTER.artifact / args.version
        if not path.is_dir():
            raise PipelineError(f"{path}: no such adapter version")
        adapter = Artifact(path, verify(path, ADAPTER.kind))
    else:
        adapter = open_artifact(volume, ADAPTER.artifact, ADAPTER.kind)
    done = promotion.promote(volume, adapter, report_digest=promotion.report_for(volume, adapter.manifest),
                             by="pft promote", reason=args.reason)
    print(f"promoted adapter {done.adapter_digest[:12]} (version {done.adapter_version})")
    return 0


def _cmd_rollback(args: argparse.Namespace) -> int:
    from private_finetuning.artifacts import promotion

    done = promotion.rollback(args.fine_tuned, by="pft rollback")
    print(f"promoted adapter {done.adapter_digest[:12]} (version {done.adapter_version}) again: {done.reason}")
    return 0


def _cmd_promotions(args: argparse.Namespace) -> int:
    from private_finetuning.artifacts import promotion

    now = promotion.current(args.fine_tuned)
    for item in promotion.history(args.fine_tuned):
        mark = "*" if now is not None and item == now else " "
        print(f"{mark} {item.promoted_at}  adapter {item.adapter_digest[:12]}  version {item.adapter_version}  "
              f"by {item.promoted_by}: {item.reason}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    load_config(args.config)
    print(f"{args.config}: valid")
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from private_finetuning.data.acmehotels import write_embedded

    for path in write_embedded(args.out):
        print(path)
    return 0


def _cmd_config_schema(args: argparse.Namespace) -> int:
    from private_finetuning.config import json_schema_text, reference_markdown

    sys.stdout.write(reference_markdown() if args.markdown else json_schema_text())
    return 0


def _add_run(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="run the pipeline on this machine, from the rendered k8s manifests")
    run.add_argument("--overlay", type=Path, help="kustomize overlay to render (default: k8s/overlays/cpu)")
    run.add_argument("--state-dir", type=Path, default=Path(".pft"),
                     help="where volumes, logs and scratch space live (default: ./.pft)")
    run.add_argument("--config", type=Path, help="a pipeline YAML to use instead of the ConfigMap's")
    run.add_argument("--only", nargs="+", metavar="WORKLOAD", help="run only these workloads (by metadata.name)")
    run.add_argument("--then", choices=["serve", "smoke", "exit"], default="smoke",
                     help="after the jobs: keep the inference server up until Ctrl-C (serve), ask it one "
                          "question and stop (smoke, the default), or stop at once (exit)")
    run.add_argument("--ask", default=None, metavar="QUESTION",
                     help="the question POSTed to /prompt once the server is ready (default: a sample question "
                          "about the embedded AcmeHotels data)")
    run.add_argument("--engine", choices=list(RUNTIMES), default="process",
                     help="how each pod runs (default: process): " + "; ".join(f"{name}: {choice.help}"
                                                                             for name, choice in RUNTIMES.items()))
    run.add_argument("--node-cpus", metavar="CPUS", help="the node's allocatable CPU, e.g. 4 or 3500m "
                     "(default: this machine's cores); a pod starts only when its requests fit")
    run.add_argument("--node-memory", metavar="QUANTITY", help="the node's allocatable memory, e.g. 8Gi "
                     "(default: this machine's)")
    run.set_defaults(func=_cmd_run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pft", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run(sub)
    kubeflow = sub.add_parser("kubeflow-compile", help="compile the Jobs of an overlay into a Kubeflow Pipelines "
                                                     "v2 pipeline YAML (needs the 'kubeflow' extra)")
    kubeflow.add_argument("output", type=Path)
    kubeflow.add_argument("--overlay", type=Path, help="kustomize overlay to take the Jobs from (default: cpu)")
    kubeflow.set_defaults(func=_cmd_kubeflow)
    volume_help = "the fine-tuned-model volume (locally .pft/volumes/fine-tuned-model; in a pod /mnt/fine-tuned-model)"
    promote = sub.add_parser("promote", help="serve an adapter version (default: the newest published) without "
                                             "waiting for evaluation")
    promote.add_argument("--fine-tuned", type=Path, default=Path(".pft/volumes/fine-tuned-model"), help=volume_help)
    promote.add_argument("--version", help="the version folder under adapter/ (default: adapter/current)")
    promote.add_argument("--reason", default="promoted by hand", help="recorded with the promotion")
    promote.set_defaults(func=_cmd_promote)
    rollback = sub.add_parser("rollback", help="serve again the adapter promoted before the current one")
    rollback.add_argument("--fine-tuned", type=Path, default=Path(".pft/volumes/fine-tuned-model"), help=volume_help)
    rollback.set_defaults(func=_cmd_rollback)
    promotions = sub.add_parser("promotions", help="list the promotions recorded on the volume, newest first")
    promotions.add_argument("--fine-tuned", type=Path, default=Path(".pft/volumes/fine-tuned-model"), help=volume_help)
    promotions.set_defaults(func=_cmd_promotions)
    schema = sub.add_parser("config-schema", help="print the JSON Schema of pipeline.yaml (editors complete and "
                                                  "check the file with it), or with --markdown its reference")
    schema.add_argument("--markdown", action="store_true", help="the key reference docs/configuration.md holds")
    schema.set_defaults(func=_cmd_config_schema)
    validate = sub.add_parser("validate-config", help="check a pipeline YAML and name any bad key")
    validate.add_argument("config", type=Path)
    validate.set_defaults(func=_cmd_validate)
    generate = sub.add_parser("generate-dataset", help="regenerate the embedded AcmeHotels files")
    generate.add_argument("out", type=Path)
    generate.set_defaults(func=_cmd_generate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-5s [%(name)s] %(message)s",
                        datefmt="%H:%M:%S")
    try:
        return args.func(args)
    except PipelineError as exc:
        logging.getLogger("pft").error("%s", exc)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
