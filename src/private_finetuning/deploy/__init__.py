"""Running the manifests: kustomize rendering, the local runner (pods as processes or containers),
the Kubeflow Pipelines compiler."""
