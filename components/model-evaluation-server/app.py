"""model-evaluation-server entrypoint; the logic lives in private_finetuning.stages.evaluation."""

from private_finetuning.stages.evaluation import main

if __name__ == "__main__":
    raise SystemExit(main())
