"""model-peft-server entrypoint; the logic lives in private_finetuning.stages.peft_training."""

from private_finetuning.stages.peft_training import main

if __name__ == "__main__":
    raise SystemExit(main())
