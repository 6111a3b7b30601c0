"""model-relocation-server entrypoint; the logic lives in private_finetuning.stages.model_relocation."""

from private_finetuning.stages.model_relocation import main

if __name__ == "__main__":
    raise SystemExit(main())
