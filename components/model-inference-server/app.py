"""model-inference-server entrypoint (gunicorn inside); the logic is in private_finetuning.stages.inference_server."""

from private_finetuning.stages.inference_server import main

if __name__ == "__main__":
    raise SystemExit(main())
