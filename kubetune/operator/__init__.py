"""The kubetune operator: FineTuneJob -> PyTorchJob, status from what the cluster holds.

`handlers` has every Kopf handler; `reconcile` what they do; `status` the pure status mapping;
`settings` the configuration from the environment; `metrics` the Prometheus endpoint.
"""
